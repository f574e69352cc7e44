//! The Redis store against a real `redis-server` (started here on a free loopback port; `.ci/run`
//! installs it): redis_rate's conformance vectors, budgets shared by several engines, refunds,
//! concurrency leases of a killed holder, fail-open and fail-closed across an outage, leases and
//! the cache's second level.

use std::time::Duration;

use tollgate::policy::{OnFailure, Redis, RedisUrl};
use tollgate::store::{RateLimit, RedisLimiter};
use tollgate::testkit::RedisServer;

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
