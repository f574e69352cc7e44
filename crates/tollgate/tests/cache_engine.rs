//! The engine's cache API: rules from the policy, hits, single-flight, errors shared, stale.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::json;
use tollgate::cache::{CacheMode, CachedResponse};
use tollgate::clock::ManualClock;
use tollgate::{CacheLookup, Engine, Policy};

fn engine(extra: &str) -> (Engine, Arc<ManualClock>) {
    let text = format!("version = 1\n[cache]\nenabled = true\nttl = \"10m\"\n{extra}");
    let policy = Policy::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    let clock = Arc::new(ManualClock::new());
    (Engine::with_clock(policy, clock.clone()), clock)
}

fn request(content: &str) -> serde_json::Value {
    json!({"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": content}]})
}

fn response(text: &str) -> CachedResponse {
    CachedResponse::new(200, text.as_bytes().to_vec())
}

#[test]
fn miss_then_store_then_hit() {
    let (e, _clock) = engine("");
    let req = request("hi");
    let CacheLookup::Miss(fill) = e.cache_lookup(&req, CacheMode::Default) else {
        panic!()
    };
    e.cache_store(fill, response("hello")).expect("stored");
    // Field order and number spelling do not matter.
    let same = json!({"messages": [{"content": "hi", "role": "user"}], "temperature": 0.0, "model": "gpt-4o"});
    match e.cache_lookup(&same, CacheMode::Default) {
        CacheLookup::Hit(r) => assert_eq!(&*r.body, b"hello"),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.cache_stats().hits, 1);
}

#[test]
fn rules_come_from_the_policy() {
    let (e, _clock) = engine("");
    let hot = json!({"model": "gpt-4o", "temperature": 0.7, "messages": []});
    match e.cache_lookup(&hot, CacheMode::Default) {
        CacheLookup::NotCacheable(r) => assert_eq!(r.code(), "temperature"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        e.cache_lookup(&hot, CacheMode::Force),
        CacheLookup::Miss(_)
    ));
    assert!(matches!(
        e.cache_lookup(&request("x"), CacheMode::Bypass),
        CacheLookup::NotCacheable(_)
    ));
}

#[test]
fn identical_calls_in_flight_make_one_upstream_call() {
    let (e, _clock) = engine("");
    let req = request("same question");
    let n = 20;
    let barrier = Barrier::new(n);
    let (leaders, answers) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let lookup = e.cache_lookup(&req, CacheMode::Default);
                    barrier.wait(); // every call has joined before the leader answers
                    match lookup {
                        CacheLookup::Miss(fill) => {
                            e.cache_store(fill, response("the answer")).expect("stored");
                            (1, b"the answer".to_vec())
                        }
                        CacheLookup::Joined(wait) => {
                            let r = wait.wait(Duration::from_secs(10)).expect("leader answered");
                            (0, r.expect("no error").body.to_vec())
                        }
                        CacheLookup::Hit(r) => (0, r.body.to_vec()),
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let leaders: usize = results.iter().map(|r| r.0).sum();
        (
            leaders,
            results.into_iter().map(|r| r.1).collect::<Vec<_>>(),
        )
    });
    assert_eq!(leaders, 1, "exactly one upstream call");
    assert!(answers.iter().all(|a| a == b"the answer"));
}

#[test]
fn the_leaders_error_reaches_every_waiter_and_is_not_cached() {
    let (e, _clock) = engine("");
    let req = request("fails");
    let CacheLookup::Miss(fill) = e.cache_lookup(&req, CacheMode::Default) else {
        panic!()
    };
    let CacheLookup::Joined(wait) = e.cache_lookup(&req, CacheMode::Default) else {
        panic!()
    };
    e.cache_fail(fill, "upstream answered 503 three times");
    let err = wait
        .wait(Duration::from_secs(5))
        .expect("completed")
        .expect_err("error shared");
    assert!(err.contains("503"));
    assert!(
        matches!(
            e.cache_lookup(&req, CacheMode::Default),
            CacheLookup::Miss(_)
        ),
        "not cached"
    );
    // Error statuses are handed to waiters but never stored.
    let CacheLookup::Miss(fill) = e.cache_lookup(&request("500"), CacheMode::Default) else {
        panic!()
    };
    e.cache_store(fill, CachedResponse::new(500, b"oops".to_vec()))
        .expect("handed over");
    assert!(matches!(
        e.cache_lookup(&request("500"), CacheMode::Default),
        CacheLookup::Miss(_)
    ));
}

#[test]
fn stale_entry_answers_only_within_the_stale_window() {
    let (e, clock) = engine("stale_if_error = \"1h\"\n");
    let req = request("old news");
    let CacheLookup::Miss(fill) = e.cache_lookup(&req, CacheMode::Default) else {
        panic!()
    };
    e.cache_store(fill, response("yesterday")).expect("stored");
    clock.advance(Duration::from_secs(11 * 60));
    let CacheLookup::Miss(fill) = e.cache_lookup(&req, CacheMode::Default) else {
        panic!("expired for normal lookups")
    };
    let stale = e.cache_stale(&req).expect("within the stale window");
    assert_eq!(&*stale.body, b"yesterday");
    e.cache_fail(fill, "every target failed");
    clock.advance(Duration::from_secs(2 * 3600));
    assert!(e.cache_stale(&req).is_none(), "past the stale window");
}

#[test]
fn an_entry_larger_than_the_cache_is_refused_but_still_delivered() {
    let (e, _clock) = engine("max_bytes = \"4KB\"\nmax_entry_bytes = \"4KB\"\n");
    let req = request("big");
    let CacheLookup::Miss(fill) = e.cache_lookup(&req, CacheMode::Default) else {
        panic!()
    };
    let CacheLookup::Joined(wait) = e.cache_lookup(&req, CacheMode::Default) else {
        panic!()
    };
    let big = CachedResponse::new(200, vec![b'x'; 10_000]);
    let refused = e.cache_store(fill, big).expect_err("too large to store");
    assert!(!refused.to_string().is_empty());
    let got = wait
        .wait(Duration::from_secs(5))
        .expect("completed")
        .expect("response");
    assert_eq!(got.body.len(), 10_000);
}

#[test]
fn tenants_never_share_entries_or_flights_by_default() {
    let (e, _clock) = engine("");
    let req = request("same question");
    let CacheLookup::Miss(alice) = e.cache_lookup_for("alice", &req, CacheMode::Default) else {
        panic!("first lookup misses");
    };
    // Bob asks the same while alice's call is in flight: he leads his own call, he does not wait
    // on hers.
    let CacheLookup::Miss(bob) = e.cache_lookup_for("bob", &req, CacheMode::Default) else {
        panic!("another tenant never joins a flight");
    };
    assert_ne!(alice.key(), bob.key());
    e.cache_store(alice, response("alice's answer"))
        .expect("stored");
    match e.cache_lookup_for("alice", &req, CacheMode::Default) {
        CacheLookup::Hit(r) => assert_eq!(&*r.body, b"alice's answer"),
        other => panic!("alice hits her own entry, got {other:?}"),
    }
    e.cache_fail(bob, "bob gave up");
    let CacheLookup::Miss(bob) = e.cache_lookup_for("bob", &req, CacheMode::Default) else {
        panic!("bob never sees alice's entry");
    };
    drop(bob);
    assert!(matches!(
        e.cache_lookup(&req, CacheMode::Default),
        CacheLookup::Miss(_)
    ));
}

#[test]
fn a_shared_scope_answers_every_tenant() {
    let (e, _clock) = engine("scope = \"shared\"\n");
    let req = request("same question");
    let CacheLookup::Miss(alice) = e.cache_lookup_for("alice", &req, CacheMode::Default) else {
        panic!("first lookup misses");
    };
    let CacheLookup::Joined(wait) = e.cache_lookup_for("bob", &req, CacheMode::Default) else {
        panic!("shared scope: bob waits on alice's call");
    };
    e.cache_store(alice, response("everyone's answer"))
        .expect("stored");
    let shared = wait
        .wait(Duration::from_secs(1))
        .expect("completed")
        .expect("an answer");
    assert_eq!(&*shared.body, b"everyone's answer");
    match e.cache_lookup_for("carol", &req, CacheMode::Default) {
        CacheLookup::Hit(r) => assert_eq!(&*r.body, b"everyone's answer"),
        other => panic!("shared scope hits across tenants, got {other:?}"),
    }
}

#[test]
fn scope_is_range_checked() {
    let err = Policy::from_toml("version = 1\n[cache]\nenabled = true\nscope = \"global\"\n")
        .expect_err("unknown scope");
    let text = err.to_string();
    assert!(
        text.contains("scope") && text.contains("\"tenant\""),
        "{text}"
    );
}
