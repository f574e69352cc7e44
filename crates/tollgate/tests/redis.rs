//! The Redis store against a real `redis-server` (started here on a free loopback port; `.ci/run`
//! installs it): redis_rate's conformance vectors, budgets shared by several engines, refunds,
//! concurrency leases of a killed holder, fail-open and fail-closed across an outage, leases and
//! the cache's second level.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::cache::{CacheMode, CachedResponse};
use tollgate::policy::{OnFailure, Redis, RedisUrl};
use tollgate::store::{RateLimit, RedisLimiter};
use tollgate::tokens::Usage;
use tollgate::{CacheLookup, Call, ChatRequest, Decision, Engine, Outcome, Prompt};
use tollgate_testkit::{RedisServer, TestUpstream};

fn section(server: &RedisServer, prefix: &str) -> Redis {
    Redis {
        url: RedisUrl::Plain(server.url()),
        key_prefix: prefix.to_owned(),
        on_failure: OnFailure::FailClosed,
        ..Redis::default()
    }
}

fn near(actual: Duration, expected: Duration, delta: Duration) -> bool {
    actual.abs_diff(expected) <= delta
}

/// go-redis/redis_rate's TestAllow and TestAllowN_IncrementZero, on the script budgets use.
#[test]
fn redis_rate_vectors() {
    let server = RedisServer::start().expect("redis-server");
    let limiter = RedisLimiter::connect(&section(&server, "vectors")).expect("connects");
    let limit = RateLimit::per_second(10);
    let ms = Duration::from_millis;

    let r = limiter.allow_n_blocking("test_id", limit, 1).unwrap();
    assert_eq!((r.allowed, r.remaining, r.retry_after), (1, 9, None));
    assert!(near(r.reset_after, ms(100), ms(10)), "{r:?}");

    let r = limiter.allow_n_blocking("test_id", limit, 2).unwrap();
    assert_eq!((r.allowed, r.remaining, r.retry_after), (2, 7, None));
    assert!(near(r.reset_after, ms(300), ms(10)), "{r:?}");

    let r = limiter.allow_n_blocking("test_id", limit, 7).unwrap();
    assert_eq!((r.allowed, r.remaining, r.retry_after), (7, 0, None));
    assert!(near(r.reset_after, ms(999), ms(10)), "{r:?}");

    let r = limiter.allow_n_blocking("test_id", limit, 1000).unwrap();
    assert_eq!((r.allowed, r.remaining), (0, 0));
    let retry = r.retry_after.expect("refused with a retry-after");
    assert!(
        near(retry, Duration::from_secs(99), Duration::from_secs(1)),
        "{r:?}"
    );
    assert!(near(r.reset_after, ms(999), ms(10)), "{r:?}");

    // Peeks: a key never used, then one used once.
    let r = limiter.allow_n_blocking("zero", limit, 0).unwrap();
    assert_eq!((r.allowed, r.remaining, r.retry_after), (0, 10, None));
    assert_eq!(r.reset_after, Duration::ZERO);
    let r = limiter.allow_n_blocking("zero", limit, 1).unwrap();
    assert_eq!((r.allowed, r.remaining), (1, 9));
    let r = limiter.allow_n_blocking("zero", limit, 0).unwrap();
    assert_eq!((r.allowed, r.remaining, r.retry_after), (0, 9, None));
    assert!(near(r.reset_after, ms(100), ms(10)), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Budgets in Redis through the engine

/// A policy with a `[redis]` section (`redis` holds its extra lines) and the given budgets.
fn policy(server: &RedisServer, prefix: &str, redis: &str, rest: &str) -> String {
    format!(
        "version = 1\n[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n{}\n{rest}",
        server.url(),
        patient(redis)
    )
}

/// `redis` settings with a roomy op_timeout unless they set one: the default 50 ms is a
/// production figure, and a test machine busy compiling can take longer for one round trip,
/// which would mark the store down in a test that is not about timeouts.
fn patient(redis: &str) -> String {
    if redis.contains("op_timeout") {
        redis.to_owned()
    } else {
        format!("{redis}\nop_timeout = \"5s\"\nconnect_timeout = \"10s\"")
    }
}

fn engine(text: &str) -> Engine {
    Engine::from_text(text).expect("valid policy")
}

fn call() -> Call<'static> {
    Call::new("gpt-4o")
        .tenant("acme")
        .prompt(Prompt::Tokens(10))
        .max_tokens(10)
}

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        ..Usage::default()
    }
}

/// Admits `call()` and settles it as a success; whether it went.
fn admit_once(e: &Engine) -> Result<(), String> {
    match e.admit(&call()) {
        Decision::Go(p) => {
            let _ = e.settle(p, &Outcome::ok(usage(10, 10)));
            Ok(())
        }
        Decision::Deny(d) => Err(d.code().to_owned()),
        Decision::Wait(w) => Err(format!("wait {w:?}")),
    }
}

/// The value of one metric line, e.g. `tollgate_budget_store_up{store="redis"}`.
fn metric(e: &Engine, series: &str) -> Option<f64> {
    e.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls `f` every 20 ms for at most `limit`; whether it became true.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

const FLEET: &str = r#"
[[budget]]
name = "fleet"
requests_per_minute = 100
store = "redis"
"#;

#[test]
fn three_engines_share_one_budget() {
    let server = RedisServer::start().expect("redis-server");
    let text = policy(&server, "three", "on_failure = \"fail_closed\"", FLEET);
    // Three engines, three connections: as three processes would be.
    let engines: Vec<Engine> = (0..3).map(|_| engine(&text)).collect();
    let started = Instant::now();
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter()
            .map(|e| {
                s.spawn(move || {
                    let mut go = 0;
                    for _ in 0..100 {
                        match admit_once(e) {
                            Ok(()) => go += 1,
                            Err(code) => assert_eq!(code, "budget_exhausted"),
                        }
                    }
                    go
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    // 100 at once, then one more per 600 ms that passed.
    let refilled = (started.elapsed().as_millis() / 600) as usize;
    assert!(
        (100..=100 + refilled).contains(&admitted),
        "admitted {admitted} across three engines (refill allows {refilled} more)"
    );
    let admitted_by: Vec<u64> = engines.iter().map(|e| e.stats()[0].admitted).collect();
    assert_eq!(admitted_by.iter().sum::<u64>(), admitted as u64);
    // Any engine reads the fleet's use from Redis.
    let usage = engines[0]
        .key_usage("fleet", &call())
        .expect("read from Redis");
    let (kind, used, burst) = usage.limits[0];
    assert_eq!(kind.as_str(), "requests_per_minute");
    assert_eq!(burst, 100.0);
    assert!(used > 98.0 && used <= 100.0, "{used}");
}

#[test]
fn refunds_and_usage_reconcile_in_redis() {
    let server = RedisServer::start().expect("redis-server");
    let text = policy(
        &server,
        "refunds",
        "on_failure = \"fail_closed\"",
        r#"
[[budget]]
name = "tokens"
tokens_per_minute = 1000
requests_per_minute = 10
store = "redis"
"#,
    );
    let a = engine(&text);
    let big = || {
        Call::new("gpt-4o")
            .tenant("acme")
            .prompt(Prompt::Tokens(100))
            .max_tokens(400)
    };
    let Decision::Go(first) = a.admit(&big()) else {
        panic!("room for 500 of 1000")
    };
    let Decision::Go(second) = a.admit(&big()) else {
        panic!("room for 1000 of 1000")
    };
    match a.admit(&big()) {
        Decision::Deny(d) => assert_eq!(d.code(), "budget_exhausted", "{d}"),
        other => panic!("no room left: {other:?}"),
    }
    // 150 used of 500 reserved: 350 back. The second was never sent: all 500 back.
    let _ = a.settle(first, &Outcome::ok(usage(100, 50)));
    drop(second);
    let Decision::Go(third) = a.admit(&big()) else {
        panic!("850 free")
    };
    // Another engine sees the same state once the reconciliation reached Redis.
    let b = engine(&text);
    let small = Call::new("gpt-4o")
        .prompt(Prompt::Tokens(100))
        .max_tokens(200);
    let mut kept = None;
    assert!(
        eventually(Duration::from_secs(5), || match b.admit(&small) {
            Decision::Go(p) => {
                kept = Some(p);
                true
            }
            _ => false,
        }),
        "300 of the 350 left fit for another engine"
    );
    match b.admit(&small) {
        Decision::Deny(d) => assert_eq!(d.code(), "budget_exhausted", "{d}"),
        other => panic!("950 used, 300 more does not fit: {other:?}"),
    }
    drop((kept, third));
}

const HOLDER_ENV: &str = "TOLLGATE_TEST_REDIS_HOLDER";

fn gate_policy(url: &str) -> String {
    format!(
        r#"version = 1
[redis]
url = "{url}"
key_prefix = "gate"
on_failure = "fail_closed"
op_timeout = "5s"
connect_timeout = "10s"
concurrency_lease = "1s"
[[budget]]
name = "one-at-a-time"
concurrency = 1
store = "redis"
"#
    )
}

/// A live holder renews its concurrency lease, so it outlives the lease time. Run by
/// `killed_holder_frees_its_slot` as a child process with `TOLLGATE_TEST_REDIS_HOLDER` set, it
/// takes the slot and holds it until it is killed (a minute at most).
#[test]
fn concurrency_lease_renews_while_held() {
    if let Ok(url) = std::env::var(HOLDER_ENV) {
        let e = engine(&gate_policy(&url));
        let Decision::Go(permit) = e.admit(&call()) else {
            panic!("the holder gets the slot")
        };
        println!("HOLDING");
        std::thread::sleep(Duration::from_secs(60));
        drop(permit);
        return;
    }
    let server = RedisServer::start().expect("redis-server");
    let holder = engine(&gate_policy(&server.url()));
    let other = engine(&gate_policy(&server.url()));
    let Decision::Go(permit) = holder.admit(&call()) else {
        panic!("free slot")
    };
    // Three lease times later the slot is still held: it was renewed.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(admit_once(&other), Err("concurrency".to_owned()));
    }
    assert_eq!(
        metric(&holder, "tollgate_budget_store_leases{store=\"redis\"}"),
        Some(1.0)
    );
    drop(permit);
    assert!(
        eventually(Duration::from_secs(5), || admit_once(&other).is_ok()),
        "released slot is free for another process"
    );
}

#[test]
fn killed_holder_frees_its_slot() {
    let server = RedisServer::start().expect("redis-server");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "concurrency_lease_renews_while_held",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("holder process");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("HOLDING") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the holder took the slot");
    let e = engine(&gate_policy(&server.url()));
    assert_eq!(admit_once(&e), Err("concurrency".to_owned()));
    // SIGKILL: no release, no goodbye; only the lease's expiry frees the slot.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        admit_once(&e),
        Err("concurrency".to_owned()),
        "still leased"
    );
    assert!(
        eventually(Duration::from_secs(5), || admit_once(&e).is_ok()),
        "the dead holder's slot expires after the 1s lease"
    );
}

#[test]
fn fail_closed_refuses_while_down_and_recovers() {
    let mut server = RedisServer::start().expect("redis-server");
    let text = policy(&server, "closed", "on_failure = \"fail_closed\"", FLEET);
    let e = engine(&text);
    admit_once(&e).unwrap();
    let up = "tollgate_budget_store_up{store=\"redis\"}";
    assert_eq!(metric(&e, up), Some(1.0));
    server.stop();
    match e.admit(&call()) {
        Decision::Deny(d) => {
            assert_eq!(d.code(), "store_unavailable");
            assert_eq!(d.budget.as_deref(), Some("fleet"));
            assert!(d.to_string().contains("fail_closed"), "{d}");
        }
        other => panic!("refused while Redis is down: {other:?}"),
    }
    assert_eq!(metric(&e, up), Some(0.0));
    // While down, calls are refused at once (no round trip to wait for).
    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(admit_once(&e), Err("store_unavailable".to_owned()));
    }
    assert!(t.elapsed() < Duration::from_secs(5), "no per-call timeout");
    server.restart().expect("restart");
    assert!(
        eventually(Duration::from_secs(10), || admit_once(&e).is_ok()),
        "recovers by itself"
    );
    assert_eq!(metric(&e, up), Some(1.0));
    assert!(metric(&e, "tollgate_budget_store_outages_total{store=\"redis\"}") >= Some(1.0));
}

#[test]
fn fail_open_decides_locally_with_a_share_and_says_so() {
    let mut server = RedisServer::start().expect("redis-server");
    let text = policy(
        &server,
        "open",
        "on_failure = \"fail_open\"\nexpected_instances = 4",
        FLEET,
    );
    let e = engine(&text);
    let fallback = "tollgate_budget_store_fallback{budget=\"fleet\"}";
    admit_once(&e).unwrap();
    assert_eq!(metric(&e, fallback), Some(0.0));
    server.stop();
    // 100 per minute over 4 instances: 25 for this one while Redis is away.
    let admitted = (0..40).filter(|_| admit_once(&e).is_ok()).count();
    assert_eq!(admitted, 25);
    assert_eq!(metric(&e, fallback), Some(1.0));
    server.restart().expect("restart");
    assert!(
        eventually(Duration::from_secs(10), || metric(&e, fallback)
            == Some(0.0)),
        "back to Redis"
    );
    // The restarted server is empty: the fleet's full budget is there again.
    let admitted = (0..120).filter(|_| admit_once(&e).is_ok()).count();
    assert!((100..=101).contains(&admitted), "{admitted}");
}

#[test]
fn leases_take_room_in_batches_and_give_back_what_is_unspent() {
    let server = RedisServer::start().expect("redis-server");
    let text = policy(
        &server,
        "lease",
        "on_failure = \"fail_closed\"",
        r#"
[[budget]]
name = "fleet"
requests_per_minute = 100
store = "redis"
lease = { size = 10, ttl = "30s" }
"#,
    );
    let a = engine(&text);
    let trips = "tollgate_budget_store_round_trips_total{store=\"redis\"}";
    let before = metric(&a, trips).unwrap();
    for _ in 0..10 {
        admit_once(&a).unwrap();
    }
    let used = metric(&a, trips).unwrap() - before;
    assert!(used <= 2.0, "ten admissions took {used} round trips");
    // A's second lease holds ten more; B gets what is left: 100 - 20.
    admit_once(&a).unwrap();
    let b = engine(&text);
    let got = (0..100).filter(|_| admit_once(&b).is_ok()).count();
    assert!((80..=81).contains(&got), "{got}");
    // A goes away: the nine calls' worth it had not spent go back.
    drop(a);
    let more = (0..20).filter(|_| admit_once(&b).is_ok()).count();
    assert!((9..=10).contains(&more), "{more}");
}

#[test]
fn cache_second_level_is_shared_and_bounded() {
    let server = RedisServer::start().expect("redis-server");
    let text = policy(
        &server,
        "l2",
        "on_failure = \"fail_open\"\nexpected_instances = 2",
        r#"
[cache]
enabled = true
max_entry_bytes = "4KB"
l2 = { store = "redis", max_bytes = "10KB" }
"#,
    );
    let a = engine(&text);
    let b = engine(&text);
    let request = |n: u32| json!({"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": format!("q{n}")}]});
    let body = |n: u32| format!("{{\"answer\":{n},\"pad\":\"{}\"}}", "x".repeat(3000));
    let store = |e: &Engine, n: u32| match e.cache_lookup(&request(n), CacheMode::Default) {
        CacheLookup::Miss(fill) => e
            .cache_store(fill, CachedResponse::new(200, body(n).into_bytes()))
            .unwrap(),
        other => panic!("a miss first: {other:?}"),
    };
    store(&a, 1);
    let hit = |e: &Engine, n: u32| match e.cache_lookup(&request(n), CacheMode::Default) {
        CacheLookup::Hit(r) => Some(r),
        CacheLookup::Miss(_) => None,
        other => panic!("{other:?}"),
    };
    assert!(
        eventually(Duration::from_secs(5), || hit(&b, 1).is_some()),
        "B finds A's answer in Redis"
    );
    assert_eq!(hit(&b, 1).unwrap().body.as_ref(), body(1).as_bytes());
    // Expiry times are in milliseconds and equal ones are ordered by key, so entry 2 must not be
    // stored in entry 1's millisecond (B can find entry 1 at once): which key a hash gives would
    // decide the eviction below.
    std::thread::sleep(Duration::from_millis(20));
    // 10KB hold three 3KB entries: the fourth pushes out the one closest to expiry, entry 1.
    for n in 2..=4 {
        store(&a, n);
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = engine(&text);
    assert!(eventually(Duration::from_secs(5), || hit(&c, 4).is_some()));
    assert!(hit(&c, 1).is_none(), "evicted to keep the bound");
    assert!(hit(&c, 3).is_some());
}

#[test]
fn cache_lookup_order_is_memory_then_redis_then_disk() {
    let server = RedisServer::start().expect("redis-server");
    let dir = std::env::temp_dir().join(format!("tollgate-order-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let disk = format!(
        "disk = {{ path = \"{}\", max_bytes = \"1MB\" }}",
        dir.join("cache.db").display()
    );
    let cache =
        |levels: &str| format!("[cache]\nenabled = true\nmax_entry_bytes = \"8KB\"\n{levels}\n");
    const REDIS: &str = "on_failure = \"fail_open\"\nexpected_instances = 3";
    let l2 = "l2 = { store = \"redis\", max_bytes = \"1MB\" }";
    let redis_only = engine(&policy(&server, "order", REDIS, &cache(l2)));
    let disk_only = engine(&format!("version = 1\n{}", cache(&disk)));
    let both = engine(&policy(
        &server,
        "order",
        REDIS,
        &cache(&format!("{l2}\n{disk}")),
    ));
    let request = |q: &str| json!({"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": q}]});
    let store =
        |e: &Engine, q: &str, body: &str| match e.cache_lookup(&request(q), CacheMode::Default) {
            CacheLookup::Miss(fill) => e
                .cache_store(fill, CachedResponse::new(200, body.as_bytes().to_vec()))
                .unwrap(),
            other => panic!("a miss first: {other:?}"),
        };
    let hit = |e: &Engine, q: &str| match e.cache_lookup(&request(q), CacheMode::Default) {
        CacheLookup::Hit(r) => Some(String::from_utf8_lossy(&r.body).into_owned()),
        CacheLookup::Miss(_) => None,
        other => panic!("{other:?}"),
    };
    // The same question answered differently in Redis and on disk: Redis wins.
    store(&redis_only, "both", "from redis");
    store(&disk_only, "both", "from disk");
    store(&disk_only, "disk", "only on disk");
    disk_only.cache_flush();
    // Wait until the background write reached Redis (a probe's misses keep nothing locally).
    let probe = engine(&policy(&server, "order", REDIS, &cache(l2)));
    assert!(eventually(Duration::from_secs(5), || {
        matches!(
            probe.cache_lookup(&request("both"), CacheMode::Default),
            CacheLookup::Hit(_)
        )
    }));
    assert_eq!(hit(&both, "both").as_deref(), Some("from redis"));
    // Not in Redis: the disk answers.
    assert_eq!(hit(&both, "disk").as_deref(), Some("only on disk"));
    // Memory first: a lower level's hit is kept locally, and the next lookup is a memory hit
    // (a memory miss is counted only when the lookup goes down a level).
    let before = both.cache_stats();
    assert_eq!(hit(&both, "disk").as_deref(), Some("only on disk"));
    let after = both.cache_stats();
    assert_eq!((after.hits, after.misses), (before.hits + 1, before.misses));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn call_api_waits_for_redis_budgets_asynchronously() {
    let server = RedisServer::start().expect("redis-server");
    let up = TestUpstream::start().unwrap();
    let text = format!(
        "{}\n[[upstream]]\nname = \"test\"\nbase_url = \"{}\"\n",
        policy(
            &server,
            "send",
            "on_failure = \"fail_closed\"",
            r#"
[[budget]]
name = "paced"
requests_per_second = 10
burst = 1
store = "redis"
when_exhausted = { wait_up_to = "5s" }
"#,
        ),
        up.base_url()
    );
    let e = engine(&text);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let results = rt.block_on(async {
        let calls = (0..5).map(|i| {
            let e = e.clone();
            tokio::spawn(async move {
                let body = json!({"model": "gpt-4o", "max_tokens": 4,
                    "messages": [{"role": "user", "content": format!("n{i}")}]});
                e.send(ChatRequest::new(body)).await
            })
        });
        futures_join(calls.collect()).await
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(up.log().len(), 5);
    // One every 100 ms: the fifth went 400 ms after the first at the earliest.
    assert!(started.elapsed() >= Duration::from_millis(390));
    assert_eq!(e.stats()[0].waited, 4);
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn a_call_holds_a_slot_in_every_gate_it_matches() {
    let server = RedisServer::start().expect("redis-server");
    let text = policy(
        &server,
        "gates",
        "on_failure = \"fail_closed\"",
        r#"
[[budget]]
name = "per-tenant"
scope = ["tenant"]
concurrency = 2
store = "redis"
[[budget]]
name = "per-model"
scope = ["model"]
concurrency = 1
store = "redis"
"#,
    );
    let e = engine(&text);
    let other = engine(&text);
    let Decision::Go(p) = e.admit(&call()) else {
        panic!("free")
    };
    assert_eq!(
        metric(&e, "tollgate_budget_store_leases{store=\"redis\"}"),
        Some(2.0),
        "one lease per gate"
    );
    match other.admit(&call()) {
        Decision::Deny(d) => {
            assert_eq!(d.code(), "concurrency");
            assert_eq!(d.budget.as_deref(), Some("per-model"));
        }
        other => panic!("the model's single slot is taken: {other:?}"),
    }
    let seen = other
        .key_usage("per-tenant", &call())
        .expect("read from Redis");
    assert_eq!((seen.key.as_str(), seen.in_flight), ("tenant=acme", 1));
    let _ = e.settle(p, &Outcome::ok(usage(10, 10)));
    assert_eq!(
        metric(&e, "tollgate_budget_store_leases{store=\"redis\"}"),
        Some(0.0)
    );
    assert!(
        eventually(Duration::from_secs(5), || admit_once(&other).is_ok()),
        "both slots released"
    );
}

#[test]
fn a_key_refused_by_its_redis_budget_falls_over_to_the_next_key() {
    let server = RedisServer::start().expect("redis-server");
    let up = TestUpstream::start().unwrap();
    // SAFETY: set before any thread of this test reads the environment; names are unique.
    unsafe {
        std::env::set_var("TOLLGATE_REDIS_KEY_A", "sk-redis-aaaa");
        std::env::set_var("TOLLGATE_REDIS_KEY_B", "sk-redis-bbbb");
    }
    let text = format!(
        r#"{}
[[upstream]]
name = "test"
base_url = "{}"
auth = {{ kind = "bearer", keys = ["env:TOLLGATE_REDIS_KEY_A", "env:TOLLGATE_REDIS_KEY_B"] }}
[[route]]
model = "gpt-4o"
targets = [{{ upstream = "test", model = "gpt-4o" }}]
"#,
        policy(
            &server,
            "pool",
            "on_failure = \"fail_closed\"",
            r#"
[[budget]]
name = "per-key"
scope = ["key"]
requests_per_minute = 1
store = "redis"
"#
        ),
        up.base_url()
    );
    // Two processes share the pool: each key takes one call a minute across both.
    let a = engine(&text);
    let b = engine(&text);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let send = |e: &Engine, n: u32| {
        let body = json!({"model": "gpt-4o", "max_tokens": 4,
            "messages": [{"role": "user", "content": format!("k{n}")}]});
        rt.block_on(e.send(ChatRequest::new(body)))
    };
    send(&a, 1).expect("first key");
    send(&b, 2).expect("the other process moves to the second key");
    let err = send(&a, 3).expect_err("both keys used up");
    match &err {
        tollgate::CallError::Denied(d) => assert_eq!(d.code(), "budget_exhausted", "{d}"),
        other => panic!("denied by the per-key budget: {other}"),
    }
    let keys: Vec<String> = up
        .log()
        .iter()
        .map(|x| x.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
}

#[test]
fn a_slow_redis_costs_at_most_op_timeout_then_nothing() {
    let server = RedisServer::start().expect("redis-server");
    let text = policy(
        &server,
        "slow",
        "on_failure = \"fail_closed\"\nop_timeout = \"100ms\"",
        FLEET,
    );
    let e = engine(&text);
    admit_once(&e).unwrap();
    server.pause();
    let t = Instant::now();
    assert_eq!(admit_once(&e), Err("store_unavailable".to_owned()));
    let first = t.elapsed();
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(admit_once(&e), Err("store_unavailable".to_owned()));
    }
    let rest = t.elapsed();
    server.resume();
    assert!(
        eventually(Duration::from_secs(10), || admit_once(&e).is_ok()),
        "recovers once Redis answers again"
    );
    // Generous bounds: the point is one timeout, not one per call.
    assert!(first < Duration::from_secs(2), "{first:?}");
    assert!(rest < Duration::from_secs(2), "{rest:?}");
}

#[test]
fn reload_changes_a_redis_limit_at_once_keeping_the_use() {
    let server = RedisServer::start().expect("redis-server");
    let budget = |n: u32| {
        format!("\n[[budget]]\nname = \"fleet\"\nrequests_per_minute = {n}\nstore = \"redis\"\n")
    };
    let text = |n| {
        policy(
            &server,
            "reload",
            "on_failure = \"fail_closed\"",
            &budget(n),
        )
    };
    let e = engine(&text(10));
    let used = (0..5).filter(|_| admit_once(&e).is_ok()).count();
    assert_eq!(used, 5);
    e.reload(&text(20)).expect("valid");
    // Five calls are in use under the new limit too: fifteen left, not twenty.
    let more = (0..30).filter(|_| admit_once(&e).is_ok()).count();
    assert!((15..=16).contains(&more), "{more}");
}

#[test]
fn budgets_work_over_tls_with_a_private_ca() {
    let server = RedisServer::start_tls().expect("redis-server with TLS");
    let text = format!(
        r#"version = 1
[redis]
url = "{}"
key_prefix = "tls"
tls_ca_file = "{}"
{}
{FLEET}"#,
        server.tls_url().unwrap(),
        server.ca_file().unwrap().display(),
        patient("on_failure = \"fail_closed\"")
    );
    let e = engine(&text);
    let admitted = (0..120).filter(|_| admit_once(&e).is_ok()).count();
    assert!((100..=101).contains(&admitted), "{admitted}");
    // The same server without trusting its CA: the connection is refused, and said so.
    // (With the default connect_timeout: the refusal comes once that has passed.)
    let untrusted = text
        .replace("tls_ca_file", "# tls_ca_file")
        .replace("connect_timeout = \"10s\"", "");
    let e = engine(&untrusted);
    match e.admit(&call()) {
        Decision::Deny(d) => assert_eq!(d.code(), "store_unavailable", "{d}"),
        other => panic!("an untrusted server is not used: {other:?}"),
    }
}
