//! The response cache through its public API: key stability and sensitivity, cacheability rules,
//! the byte-bounded LRU with TTL and stale window (in virtual time), and single-flight.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tollgate::cache::{
    CacheKey, CacheMode, CacheStats, CacheStore, CachedResponse, ENTRY_OVERHEAD, EVENT_OVERHEAD,
    EXCLUDED_FIELDS, Flight, FlightError, Lookup, NotCacheable, Refused, SingleFlight, SseEvent,
    cache_key, cacheable,
};
use tollgate::policy::Cache;
use tollgate::tokens::Usage;

const SEC: u64 = 1_000_000_000;
/// Every blocking wait in these tests gives up after this long.
const PATIENCE: Duration = Duration::from_secs(10);

fn key_of(text: &str) -> CacheKey {
    cache_key(&serde_json::from_str(text).expect("test JSON is valid"))
}

fn base() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a prime."}
        ]
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut v = base();
    v[field] = value;
    v
}

// ---------------------------------------------------------------------------------------------
// Key stability

#[test]
fn key_ignores_field_order_at_every_depth() {
    let a = key_of(
        r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}}}}}}"#,
    );
    let b = key_of(
        r#"{"response_format":{"json_schema":{"schema":{"properties":{"b":{"type":"integer"},"a":{"type":"string"}},"type":"object"},"name":"x"},"type":"json_schema"},
            "messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"gpt-4o"}"#,
    );
    assert_eq!(a, b);
}

#[test]
fn key_normalises_integral_numbers() {
    let forms = [
        r#"{"model":"m","messages":[],"temperature":1,"max_tokens":100,"seed":7}"#,
        r#"{"model":"m","messages":[],"temperature":1.0,"max_tokens":100.0,"seed":7.0}"#,
        r#"{"model":"m","messages":[],"temperature":1e0,"max_tokens":1e2,"seed":0.7e1}"#,
        r#"{"model":"m","messages":[],"temperature":10E-1,"max_tokens":100,"seed":7}"#,
    ];
    let keys: HashSet<_> = forms.iter().map(|t| key_of(t)).collect();
    assert_eq!(keys.len(), 1, "{forms:?}");
    assert_eq!(
        key_of(r#"{"temperature":0.2}"#),
        key_of(r#"{"temperature":2e-1}"#)
    );
    assert_ne!(
        key_of(r#"{"temperature":0.2}"#),
        key_of(r#"{"temperature":0.3}"#)
    );
}

#[test]
fn key_of_unicode_is_its_exact_utf8() {
    let cjk = json!({"model": "m", "messages": [{"role": "user", "content": "你好，世界 🌍"}]});
    let escaped: Value =
        serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"\u4f60\u597d\uff0c\u4e16\u754c \ud83c\udf0d"}]}"#)
            .expect("valid JSON");
    assert_eq!(cache_key(&cjk), cache_key(&escaped));
    // No Unicode normalisation: precomposed and decomposed "é" are different prompts.
    let nfc = json!({"messages": [{"content": "caf\u{e9}"}]});
    let nfd = json!({"messages": [{"content": "cafe\u{301}"}]});
    assert_ne!(cache_key(&nfc), cache_key(&nfd));
}

#[test]
fn key_is_a_golden_value() {
    // Pins the scheme: if this changes, every key in a shared (Redis) cache changes with it.
    // Change `KEY_SCHEME` and this value together, on purpose only.
    let request = json!({
        "model": "gpt-4o",
        "temperature": 0,
        "seed": 42,
        "max_tokens": 64,
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France? Ünïcödé ✓"}
        ],
        "stop": ["\n", "END"],
        "logit_bias": {"50256": -100},
        "stream": true,
        "user": "someone"
    });
    let key = cache_key(&request);
    assert_eq!(key.to_string(), GOLDEN);
    assert_eq!(format!("{:032x}", key.0), GOLDEN);
}

const GOLDEN: &str = "82e3dc105e621502ab25ff27cdcf9569";

#[test]
fn key_is_the_same_across_calls_and_threads() {
    let req = base();
    let here = cache_key(&req);
    let there = thread::spawn(move || cache_key(&req))
        .join()
        .expect("thread ran");
    assert_eq!(here, there);
}

// ---------------------------------------------------------------------------------------------
// Key sensitivity

#[test]
fn every_output_changing_field_changes_the_key() {
    let k0 = cache_key(&base());
    let fields: &[(&str, Value)] = &[
        ("temperature", json!(0.5)),
        ("top_p", json!(0.9)),
        ("n", json!(2)),
        ("max_tokens", json!(10)),
        ("max_completion_tokens", json!(10)),
        ("stop", json!(["\n"])),
        ("seed", json!(1)),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("tool_choice", json!("auto")),
        ("functions", json!([{"name": "f"}])),
        ("function_call", json!("auto")),
        ("response_format", json!({"type": "json_object"})),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(0.5)),
        ("logit_bias", json!({"1": 5})),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("reasoning_effort", json!("low")),
        ("modalities", json!(["text", "audio"])),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("prediction", json!({"type": "content", "content": "x"})),
        ("parallel_tool_calls", json!(false)),
        ("web_search_options", json!({})),
        ("verbosity", json!("low")),
        ("some_future_parameter", json!(1)),
    ];
    let mut seen = HashSet::from([k0]);
    for (field, value) in fields {
        let k = cache_key(&with(field, value.clone()));
        assert_ne!(k, k0, "{field} must change the key");
        assert!(seen.insert(k), "{field} collides with another field");
    }
    // The model and the messages, of course.
    assert_ne!(cache_key(&with("model", json!("gpt-4o"))), k0);
    let mut v = base();
    v["messages"][1]["content"] = json!("Name a prime!");
    assert_ne!(cache_key(&v), k0);
    let mut v = base();
    v["messages"][1]["role"] = json!("assistant");
    assert_ne!(cache_key(&v), k0);
    let mut v = base();
    v["messages"].as_array_mut().expect("array").reverse();
    assert_ne!(cache_key(&v), k0, "message order matters");
    // Excluded names are excluded only at the top level.
    let mut v = base();
    v["messages"][1]["user"] = json!("x");
    assert_ne!(cache_key(&v), k0);
}

#[test]
fn excluded_fields_do_not_change_the_key() {
    let k0 = cache_key(&base());
    for field in EXCLUDED_FIELDS {
        let k = cache_key(&with(field, json!({"any": "value"})));
        assert_eq!(k, k0, "{field} must not change the key");
    }
    let all = json!({
        "stream": true, "stream_options": {"include_usage": true}, "user": "u-1",
        "metadata": {"team": "x"}, "store": true, "service_tier": "flex",
        "safety_identifier": "h", "prompt_cache_key": "p", "prompt_cache_retention": "24h"
    });
    let mut v = base();
    for (k, val) in all.as_object().expect("object") {
        v[k] = val.clone();
    }
    assert_eq!(cache_key(&v), k0);
    // A top-level null means "not given".
    assert_eq!(cache_key(&with("seed", Value::Null)), k0);
    assert_ne!(cache_key(&with("stop", json!([null]))), k0);
}

/// JSON text of `v` with object members in an order picked by `order` and integral numbers
/// written in a form picked by `order` too.
fn shuffled_text(v: &Value, order: &mut impl Iterator<Item = u32>, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            // Fisher-Yates with the supplied randomness.
            for i in (1..members.len()).rev() {
                let j = order.next().unwrap_or(0) as usize % (i + 1);
                members.swap(i, j);
            }
            out.push('{');
            for (i, (k, val)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                shuffled_text(val, order, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                shuffled_text(item, order, out);
            }
            out.push(']');
        }
        Value::Number(n) if n.is_i64() => {
            let i = n.as_i64().expect("checked");
            match order.next().unwrap_or(0) % 3 {
                0 => out.push_str(&i.to_string()),
                1 => out.push_str(&format!("{i}.0")),
                _ => out.push_str(&format!("{i}e0")),
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(|i| json!(i)),
        // Fractions with short, exact decimal forms: serde_json's default float parser is not
        // correctly rounded for every long decimal, so text -> f64 -> text -> f64 may move by
        // one ulp (a parser property, not a key property).
        (-1_000_000i64..1_000_000).prop_map(|i| json!(i as f64 / 64.0)),
        "[a-z\u{4e00}-\u{4e10} ]{0,8}".prop_map(Value::String),
    ]
}

fn json_tree() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn key_is_invariant_under_member_permutation(
        tree in json_tree(),
        order in prop::collection::vec(any::<u32>(), 64),
    ) {
        let request = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                             "extra": tree});
        let mut text = String::new();
        shuffled_text(&request, &mut order.iter().copied().cycle(), &mut text);
        let reparsed: Value = serde_json::from_str(&text).expect("writer emits valid JSON");
        prop_assert_eq!(cache_key(&reparsed), cache_key(&request), "{}", text);
    }
}

// ---------------------------------------------------------------------------------------------
// Cacheability

fn on() -> Cache {
    Cache {
        enabled: true,
        ..Cache::default()
    }
}

#[test]
fn cacheability_follows_each_rule() {
    let p = on();
    let d = CacheMode::Default;
    assert_eq!(cacheable(&base(), &p, d), Ok(()));

    let off = Cache::default();
    assert_eq!(cacheable(&base(), &off, d), Err(NotCacheable::Disabled));
    assert_eq!(
        cacheable(&base(), &off, CacheMode::Force),
        Err(NotCacheable::Disabled)
    );
    assert_eq!(
        cacheable(&base(), &p, CacheMode::Bypass),
        Err(NotCacheable::Bypassed)
    );

    // Absent temperature is the API default 1.0.
    let mut no_t = base();
    no_t.as_object_mut().expect("object").remove("temperature");
    assert_eq!(
        cacheable(&no_t, &p, d),
        Err(NotCacheable::Temperature {
            value: 1.0,
            max: 0.0
        })
    );
    assert_eq!(
        cacheable(&with("temperature", Value::Null), &p, d).map_err(|e| e.code()),
        Err("temperature")
    );
    let warm = Cache {
        temperature_at_most: 0.7,
        ..on()
    };
    assert_eq!(
        cacheable(&with("temperature", json!(0.7)), &warm, d),
        Ok(())
    );
    assert_eq!(
        cacheable(&with("temperature", json!(0.8)), &warm, d).map_err(|e| e.code()),
        Err("temperature")
    );

    assert_eq!(
        cacheable(&with("n", json!(3)), &p, d),
        Err(NotCacheable::N { value: 3, max: 1 })
    );
    let many = Cache { max_n: 4, ..on() };
    assert_eq!(cacheable(&with("n", json!(3)), &many, d), Ok(()));

    let tools = json!([{"type": "function", "function": {"name": "lookup"}}]);
    assert_eq!(
        cacheable(&with("tools", tools.clone()), &p, d),
        Err(NotCacheable::Tools)
    );
    assert_eq!(
        cacheable(&with("functions", json!([{"name": "f"}])), &p, d),
        Err(NotCacheable::Tools)
    );
    assert_eq!(cacheable(&with("tools", json!([])), &p, d), Ok(()));
    let tools_ok = Cache {
        allow_tools: true,
        ..on()
    };
    assert_eq!(
        cacheable(&with("tools", tools.clone()), &tools_ok, d),
        Ok(())
    );

    let seeded = Cache {
        require_seed: true,
        ..on()
    };
    assert_eq!(cacheable(&base(), &seeded, d), Err(NotCacheable::NoSeed));
    assert_eq!(cacheable(&with("seed", json!(3)), &seeded, d), Ok(()));

    // Force skips temperature, n, tools and seed.
    let mut everything = no_t.clone();
    everything["n"] = json!(5);
    everything["tools"] = tools;
    assert_eq!(cacheable(&everything, &seeded, CacheMode::Force), Ok(()));

    // Streams are cacheable (replayed as events).
    assert_eq!(cacheable(&with("stream", json!(true)), &p, d), Ok(()));
}

#[test]
fn reasons_have_codes_and_messages_that_say_what_to_do() {
    let e = NotCacheable::Temperature {
        value: 1.0,
        max: 0.0,
    };
    assert_eq!(e.code(), "temperature");
    let msg = e.to_string();
    assert!(
        msg.contains("temperature_at_most") && msg.contains("1.0"),
        "{msg}"
    );
    assert_eq!(NotCacheable::NoSeed.code(), "no_seed");
    assert!(NotCacheable::Tools.to_string().contains("allow_tools"));
}

// ---------------------------------------------------------------------------------------------
// Store

/// A key in shard `i % 16` (the shard is picked by the high 64 bits).
fn k(i: u64) -> CacheKey {
    CacheKey((u128::from(i) << 64) | u128::from(i))
}

fn body(len: usize) -> CachedResponse {
    CachedResponse::new(200, vec![b'x'; len])
}

fn store(max_bytes: u64, ttl_secs: u64, stale_secs: Option<u64>) -> CacheStore {
    CacheStore::new(
        max_bytes,
        max_bytes,
        Duration::from_secs(ttl_secs),
        stale_secs.map(Duration::from_secs),
    )
}

const ENTRY: u64 = 1000 + ENTRY_OVERHEAD;

#[test]
fn lru_bound_in_bytes_evicts_least_recent_across_shards() {
    let s = store(4 * ENTRY, 600, None);
    for i in 0..4 {
        s.insert(k(i), body(1000), i).expect("fits");
    }
    assert_eq!(s.bytes(), 4 * ENTRY);
    assert!(s.get(k(0), 10).is_hit()); // k0 is now the most recent; k1 the least
    s.insert(k(4), body(1000), 11).expect("fits");
    assert_eq!(s.bytes(), 4 * ENTRY);
    assert!(matches!(s.get(k(1), 12), Lookup::Miss));
    for (t, i) in [(13, 0), (14, 2), (15, 3), (16, 4)] {
        assert!(s.get(k(i), t).is_hit(), "k{i}");
    }
    // Recency is now k4 > k3 > k2 > k0. A bigger entry evicts as many as it needs, least
    // recent first: 5 x 1256 would not fit with 2756, so k0, k2 and k3 go.
    s.insert(k(5), body(2500), 17).expect("fits");
    assert_eq!(s.bytes(), ENTRY + 2500 + ENTRY_OVERHEAD);
    let st = s.stats();
    assert_eq!((st.evictions, st.entries), (4, 2), "{st:?}");
    assert!(s.get(k(4), 18).is_hit());
    assert!(s.get(k(5), 19).is_hit());
}

#[test]
fn lru_within_one_shard() {
    let s = store(3 * ENTRY, 600, None);
    let same = |i: u64| CacheKey(u128::from(i)); // high bits 0: all in shard 0
    for i in 0..3 {
        s.insert(same(i), body(1000), i).expect("fits");
    }
    assert!(s.get(same(0), 5).is_hit());
    s.insert(same(3), body(1000), 6).expect("fits");
    assert!(matches!(s.get(same(1), 7), Lookup::Miss));
    assert!(s.get(same(0), 7).is_hit());
}

#[test]
fn oversized_entries_are_refused_and_evict_nothing() {
    let s = CacheStore::new(10 * ENTRY, 2 * ENTRY, Duration::from_secs(60), None);
    for i in 0..10 {
        s.insert(k(i), body(1000), i).expect("fits");
    }
    let too_big = s.insert(k(99), body(3000), 20);
    assert_eq!(
        too_big,
        Err(Refused::EntryTooLarge {
            size: 3000 + ENTRY_OVERHEAD,
            max_entry_bytes: 2 * ENTRY
        })
    );
    assert_eq!(too_big.unwrap_err().code(), "entry_too_large");
    // max_entry_bytes above max_bytes: the whole-cache bound still refuses.
    s.set_limits(10 * ENTRY, u64::MAX, Duration::from_secs(60), None);
    let huge = s.insert(k(98), body(20_000), 21);
    assert!(
        matches!(huge, Err(Refused::LargerThanCache { max_bytes, .. }) if max_bytes == 10 * ENTRY)
    );
    assert!(
        huge.unwrap_err()
            .to_string()
            .contains("larger than the whole cache")
    );
    let st = s.stats();
    assert_eq!((st.entries, st.evictions, st.refused), (10, 0, 2));
    assert_eq!(st.bytes, 10 * ENTRY);
}

#[test]
fn ttl_and_stale_window_in_virtual_time() {
    let s = store(1 << 20, 10, Some(5));
    s.insert(k(1), body(10), 0).expect("fits");
    assert!(s.get(k(1), 10 * SEC - 1).is_hit());
    // Past the TTL: `get` misses but keeps the entry for `get_stale`.
    assert!(matches!(s.get(k(1), 10 * SEC), Lookup::Miss));
    match s.get_stale(k(1), 12 * SEC) {
        Lookup::Stale(r) => assert_eq!(r.age(12 * SEC), 12 * SEC),
        other => panic!("expected stale, got {other:?}"),
    }
    // A fresh entry is a plain hit through get_stale too.
    s.insert(k(2), body(10), 12 * SEC).expect("fits");
    assert!(s.get_stale(k(2), 13 * SEC).is_hit());
    // Past TTL + stale window: gone for good, removed on lookup.
    assert!(matches!(s.get_stale(k(1), 15 * SEC), Lookup::Miss));
    assert_eq!(s.len(), 1);
    let st = s.stats();
    assert_eq!(
        (st.hits, st.misses, st.stale_hits, st.expired),
        (2, 1, 1, 1),
        "{st:?}"
    );
}

#[test]
fn without_stale_window_entries_expire_at_ttl() {
    let s = store(1 << 20, 10, None);
    s.insert(k(1), body(10), 0).expect("fits");
    assert!(matches!(s.get_stale(k(1), 10 * SEC), Lookup::Miss));
    assert!(s.is_empty());
    assert_eq!(s.bytes(), 0);
}

#[test]
fn purge_removes_only_expired_entries() {
    let s = store(1 << 20, 10, Some(5));
    s.insert(k(1), body(10), 0).expect("fits");
    s.insert(k(2), body(10), 6 * SEC).expect("fits");
    s.insert(k(3), body(10), 20 * SEC).expect("fits");
    assert_eq!(s.purge_expired(20 * SEC), 1); // k1 (age 20 s); k2 is stale, kept
    assert_eq!(s.len(), 2);
    assert_eq!(s.bytes(), 2 * (10 + ENTRY_OVERHEAD));
    assert!(matches!(s.get_stale(k(2), 20 * SEC), Lookup::Stale(_)));
}

#[test]
fn set_limits_shrinks_and_changes_ttl_at_once() {
    let s = store(10 * ENTRY, 600, None);
    for i in 0..10 {
        s.insert(k(i), body(1000), i).expect("fits");
    }
    s.set_limits(3 * ENTRY, 3 * ENTRY, Duration::from_secs(1), None);
    assert_eq!(s.len(), 3);
    assert_eq!(s.bytes(), 3 * ENTRY);
    for i in 7..10 {
        assert!(s.get(k(i), 100).is_hit(), "the most recent stay: k{i}");
    }
    // The new TTL (1 s) applies to entries stored under the old one.
    assert!(matches!(s.get(k(9), 2 * SEC), Lookup::Miss));
    // And from a policy.
    let p = Cache {
        enabled: true,
        max_bytes: ENTRY,
        max_entry_bytes: ENTRY,
        ..Cache::default()
    };
    s.apply_policy(&p);
    assert!(s.bytes() <= ENTRY);
}

#[test]
fn counters_add_up() {
    let s = store(1 << 20, 60, None);
    assert_eq!(s.stats(), CacheStats::default());
    s.insert(k(1), body(100), 0).expect("fits");
    s.insert(k(2), body(200), 0).expect("fits");
    s.get(k(1), 1);
    s.get(k(1), 2);
    s.get(k(3), 3);
    let st = s.stats();
    assert_eq!(
        st,
        CacheStats {
            hits: 2,
            misses: 1,
            stale_hits: 0,
            inserts: 2,
            refused: 0,
            evictions: 0,
            expired: 0,
            bytes: 300 + 2 * ENTRY_OVERHEAD,
            entries: 2,
        }
    );
    s.clear();
    assert_eq!((s.stats().bytes, s.stats().entries), (0, 0));
}

#[test]
fn streamed_answers_are_stored_with_their_events() {
    let s = store(1 << 20, 60, None);
    let events = vec![
        SseEvent::data(r#"{"choices":[{"delta":{"content":"4"}}]}"#),
        SseEvent {
            event: Some("message".into()),
            data: "[DONE]".into(),
            id: Some("7".into()),
        },
    ];
    let usage = Usage {
        prompt_tokens: 10,
        completion_tokens: 1,
        total_tokens: 11,
        ..Usage::default()
    };
    let r = CachedResponse::new(200, Vec::new())
        .with_events(events.clone())
        .with_usage(usage);
    let expected = (events[0].data.len() + 7 + 6 + 1) as u64 + 2 * EVENT_OVERHEAD + ENTRY_OVERHEAD;
    assert_eq!(r.size(), expected);
    s.insert(k(1), r, 5).expect("fits");
    let Lookup::Hit(hit) = s.get(k(1), 6) else {
        panic!("stored")
    };
    assert_eq!(hit.events.as_deref(), Some(&events[..]));
    assert_eq!(hit.usage, Some(usage));
    assert_eq!((hit.stored_at(), hit.size()), (5, expected));
    assert_eq!(s.bytes(), expected);
}

#[test]
fn concurrent_hits_and_inserts_keep_the_budget() {
    let s = Arc::new(store(50 * ENTRY, 600, None));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                for i in 0..500u64 {
                    let key = k(t * 1000 + i % 80);
                    if !s.get(key, i).is_hit() {
                        let _ = s.insert(key, body(1000), i);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread ran");
    }
    let st = s.stats();
    assert!(st.bytes <= 50 * ENTRY, "{st:?}");
    assert_eq!(st.bytes, st.entries * ENTRY, "{st:?}");
    assert_eq!(st.hits + st.misses, 2000);
}

// ---------------------------------------------------------------------------------------------
// Single flight

type Shared = Result<Arc<CachedResponse>, String>;

#[test]
fn fifty_identical_requests_make_one_upstream_call() {
    const N: usize = 50;
    let flights: SingleFlight<Shared> = SingleFlight::new();
    let key = cache_key(&base());
    let start = Barrier::new(N);
    let joined = Barrier::new(N);
    let upstream_calls = AtomicUsize::new(0);
    let results: Vec<(bool, Shared)> = thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let flight = flights.join(key);
                    // Nobody completes until everyone has joined: the leader is "slow".
                    joined.wait();
                    match flight {
                        Flight::Leader(guard) => {
                            upstream_calls.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(guard.followers(), N - 1);
                            let answer = Arc::new(CachedResponse::new(200, &b"{\"n\":1}"[..]));
                            guard.complete(Ok(Arc::clone(&answer)));
                            (true, Ok(answer))
                        }
                        Flight::Follower(wait) => {
                            (false, wait.wait(PATIENCE).expect("the leader completes"))
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread ran"))
            .collect()
    });
    assert_eq!(upstream_calls.load(Ordering::SeqCst), 1);
    assert_eq!(results.iter().filter(|(leader, _)| *leader).count(), 1);
    assert_eq!(results.iter().filter(|(leader, _)| !*leader).count(), N - 1);
    let leader_answer = results
        .iter()
        .find(|(l, _)| *l)
        .map(|(_, r)| r.clone().expect("ok"))
        .expect("one leader");
    for (_, r) in &results {
        let r = r.as_ref().expect("ok");
        assert!(
            Arc::ptr_eq(r, &leader_answer),
            "followers share the leader's answer"
        );
    }
    assert_eq!(flights.in_flight(), 0);
}

#[test]
fn errors_are_shared_with_followers() {
    let flights: SingleFlight<Shared> = SingleFlight::new();
    let Flight::Leader(leader) = flights.join(k(1)) else {
        panic!("first join leads")
    };
    let Flight::Follower(follower) = flights.join(k(1)) else {
        panic!("second join follows")
    };
    leader.complete(Err("upstream 503".into()));
    match follower.wait(PATIENCE) {
        Ok(Err(e)) => assert_eq!(e, "upstream 503"),
        other => panic!("expected the leader's error, got {other:?}"),
    }
}

#[test]
fn abandoned_leader_releases_followers_and_the_key() {
    let flights: SingleFlight<u32> = SingleFlight::new();
    let leader = flights.join(k(2));
    assert!(leader.is_leader());
    let followers: Vec<_> = (0..3).map(|_| flights.join(k(2))).collect();
    let waiting = thread::spawn({
        let Flight::Follower(f) = flights.join(k(2)) else {
            panic!("follows")
        };
        move || f.wait(PATIENCE)
    });
    drop(leader); // e.g. the leading task was cancelled
    assert_eq!(
        waiting.join().expect("thread ran"),
        Err(FlightError::Abandoned)
    );
    for f in followers {
        let Flight::Follower(f) = f else {
            panic!("follows")
        };
        assert_eq!(f.wait(PATIENCE), Err(FlightError::Abandoned));
    }
    // One of them may now retry as the new leader.
    assert!(flights.join(k(2)).is_leader());
}

#[test]
fn a_completed_key_no_longer_merges() {
    let flights: SingleFlight<u32> = SingleFlight::new();
    let Flight::Leader(first) = flights.join(k(3)) else {
        panic!("leads")
    };
    first.complete(1);
    let Flight::Leader(second) = flights.join(k(3)) else {
        panic!("a join after completion leads a new call")
    };
    let Flight::Follower(f) = flights.join(k(3)) else {
        panic!("follows the second")
    };
    second.complete(2);
    assert_eq!(f.wait(PATIENCE), Ok(2));
    // Different keys never merge.
    assert!(flights.join(k(4)).is_leader());
    assert!(flights.join(k(5)).is_leader());
}

#[test]
fn wait_times_out_and_may_wait_again() {
    let flights: SingleFlight<u32> = SingleFlight::new();
    let Flight::Leader(leader) = flights.join(k(6)) else {
        panic!("leads")
    };
    let Flight::Follower(f) = flights.join(k(6)) else {
        panic!("follows")
    };
    assert_eq!(f.wait(Duration::from_millis(1)), Err(FlightError::Timeout));
    assert_eq!(f.try_result(), None);
    leader.complete(9);
    assert_eq!(f.wait(PATIENCE), Ok(9));
}

/// A minimal executor: polls on this thread, parks between wake-ups, gives up after `PATIENCE`.
fn block_on<F: Future + Unpin>(mut fut: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Poll::Ready(v) = Pin::new(&mut fut).poll(&mut cx) {
            return v;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "future not woken in time");
        thread::park_timeout(left);
    }
}

#[test]
fn followers_can_await() {
    let flights: SingleFlight<Shared> = SingleFlight::new();
    let Flight::Leader(leader) = flights.join(k(7)) else {
        panic!("leads")
    };
    let followers: Vec<_> = (0..8)
        .map(|_| match flights.join(k(7)) {
            Flight::Follower(f) => f,
            Flight::Leader(_) => panic!("follows"),
        })
        .collect();
    let ready = Barrier::new(9);
    thread::scope(|s| {
        let handles: Vec<_> = followers
            .into_iter()
            .map(|mut f| {
                let ready = &ready;
                s.spawn(move || {
                    // Register the waker before the leader completes.
                    let waker = Waker::noop();
                    assert!(
                        Pin::new(&mut f)
                            .poll(&mut Context::from_waker(waker))
                            .is_pending()
                    );
                    ready.wait();
                    block_on(f)
                })
            })
            .collect();
        ready.wait();
        leader.complete(Ok(Arc::new(CachedResponse::new(200, &b"{}"[..]))));
        for h in handles {
            let got = h.join().expect("thread ran").expect("completed");
            assert_eq!(&*got.expect("ok").body, b"{}");
        }
    });
}

#[test]
fn an_awaiting_follower_sees_abandonment() {
    let flights: SingleFlight<u8> = SingleFlight::new();
    let leader = flights.join(k(8));
    let Flight::Follower(f) = flights.join(k(8)) else {
        panic!("follows")
    };
    let t = thread::spawn(move || block_on(f));
    drop(leader);
    assert_eq!(t.join().expect("thread ran"), Err(FlightError::Abandoned));
}
