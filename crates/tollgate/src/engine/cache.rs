//! The response cache as the engine offers it: lookup with single-flight, store, stale-if-error.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clock::duration_nanos;
use crate::store::RedisStore;

use crate::cache::{
    CacheKey, CacheMode, CacheStats, CachedResponse, Flight, FollowerWait, LeaderGuard, Lookup,
    NotCacheable, Refused, cache_key, cacheable,
};

use super::Engine;

/// What a single-flight leader shares with the identical calls that waited for it: the response,
/// or the error that ended the call.
pub type FlightResult = Result<Arc<CachedResponse>, Arc<str>>;

/// The answer to [`Engine::cache_lookup`].
#[derive(Debug)]
pub enum CacheLookup {
    /// Answer from the cache.
    Hit(Arc<CachedResponse>),
    /// Not cached and nobody is fetching it: make the call, then hand the response to
    /// [`Engine::cache_store`] (or the error to [`Engine::cache_fail`]). Identical calls made
    /// meanwhile wait for it.
    Miss(CacheFill),
    /// An identical call is in flight: wait for its answer (blocking with
    /// [`FollowerWait::wait`], or `.await` it).
    Joined(FollowerWait<FlightResult>),
    /// This request may not be answered from the cache.
    NotCacheable(NotCacheable),
}

/// The duty of the call that fetches a response for everyone waiting on the same key. Dropping
/// it unfinished tells the waiters the leader gave up (they may retry and one becomes leader).
#[derive(Debug)]
pub struct CacheFill {
    key: CacheKey,
    leader: Option<LeaderGuard<FlightResult>>,
}

impl CacheFill {
    /// The cache key of the request.
    pub fn key(&self) -> CacheKey {
        self.key
    }
}

impl Engine {
    /// Looks a chat request up under the policy's cache rules (`[cache]`): a hit, a miss that
    /// this caller fills, an identical call already in flight to wait for, or why the request is
    /// not cacheable (temperature, `n`, tools, seed, per-request mode, cache off).
    ///
    /// With a second level in Redis (`l2`), the call that would fetch asks Redis first, waiting
    /// on this thread at most `op_timeout`; async code should use
    /// [`Engine::cache_lookup_async`].
    pub fn cache_lookup(&self, request: &Value, mode: CacheMode) -> CacheLookup {
        match (self.lookup_local(request, mode), self.l2()) {
            (CacheLookup::Miss(fill), Some(store)) => {
                let found = store.cache_get_blocking(fill.key).ok().flatten();
                self.l2_found(fill, found)
            }
            (lookup, _) => lookup,
        }
    }

    /// [`Engine::cache_lookup`] for async code: the lookup in the second level is awaited.
    pub async fn cache_lookup_async(&self, request: &Value, mode: CacheMode) -> CacheLookup {
        match (self.lookup_local(request, mode), self.l2()) {
            (CacheLookup::Miss(fill), Some(store)) => {
                let found = store.cache_get(fill.key).await.ok().flatten();
                self.l2_found(fill, found)
            }
            (lookup, _) => lookup,
        }
    }

    /// The lookup in this process: the local cache, then single-flight.
    fn lookup_local(&self, request: &Value, mode: CacheMode) -> CacheLookup {
        let compiled = self.inner.current.load();
        let rules = &compiled.policy.cache;
        if let Err(reason) = cacheable(request, rules, mode) {
            return CacheLookup::NotCacheable(reason);
        }
        let key = cache_key(request);
        let now = compiled.clock.now();
        if let Lookup::Hit(r) = self.inner.cache.get(key, now) {
            return CacheLookup::Hit(r);
        }
        if !rules.single_flight {
            return CacheLookup::Miss(CacheFill { key, leader: None });
        }
        match self.inner.flights.join(key) {
            Flight::Leader(guard) => CacheLookup::Miss(CacheFill {
                key,
                leader: Some(guard),
            }),
            Flight::Follower(wait) => CacheLookup::Joined(wait),
        }
    }

    /// The Redis store when the running policy has a cache second level in it and it is up.
    fn l2(&self) -> Option<Arc<RedisStore>> {
        self.inner.current.load().policy.cache.l2?;
        self.inner
            .store
            .lock()
            .as_ref()
            .filter(|s| s.is_up())
            .map(Arc::clone)
    }

    /// A miss after the second level answered: its entry (kept locally too, as old as it is
    /// in Redis, and handed to the calls waiting on the key) or still a miss.
    fn l2_found(&self, fill: CacheFill, found: Option<(CachedResponse, Duration)>) -> CacheLookup {
        let Some((response, left)) = found else {
            return CacheLookup::Miss(fill);
        };
        let compiled = self.inner.current.load();
        let now = compiled.clock.now();
        let age = compiled.policy.cache.ttl.saturating_sub(left);
        let stored_at = now.saturating_sub(duration_nanos(age));
        let shared = Arc::new(response.clone());
        let _ = self.inner.cache.insert(fill.key, response, stored_at);
        if let Some(leader) = fill.leader {
            leader.complete(Ok(Arc::clone(&shared)));
        }
        CacheLookup::Hit(shared)
    }

    /// Stores the response of a [`CacheLookup::Miss`] and hands it to every call waiting on the
    /// same key. Only 2xx responses are stored (errors are never cached, but waiters still get
    /// them); a response larger than the policy allows is handed over but not stored, and the
    /// refusal is returned.
    pub fn cache_store(&self, fill: CacheFill, response: CachedResponse) -> Result<(), Refused> {
        let now = self.inner.clock.now();
        let shared = Arc::new(response.clone());
        let stored = if (200..300).contains(&response.status) {
            self.inner.cache.insert(fill.key, response, now)
        } else {
            Ok(())
        };
        if stored.is_ok()
            && (200..300).contains(&shared.status)
            && let Some(store) = self.l2()
            && let Some(l2) = self.inner.current.load().policy.cache.l2
        {
            let ttl = self.inner.current.load().policy.cache.ttl;
            store.cache_put(fill.key, &shared, ttl, l2.max_bytes);
        }
        if let Some(leader) = fill.leader {
            leader.complete(Ok(shared));
        }
        stored
    }

    /// Ends a [`CacheLookup::Miss`] whose call failed: every waiting call gets `error`.
    pub fn cache_fail(&self, fill: CacheFill, error: &str) {
        if let Some(leader) = fill.leader {
            leader.complete(Err(Arc::from(error)));
        }
    }

    /// Stale-if-error: when every target has failed, an entry past its TTL but within the
    /// policy's `stale_if_error` may answer; the caller should mark the answer stale. `None` when
    /// the policy has no stale window or nothing usable is stored.
    pub fn cache_stale(&self, request: &Value) -> Option<Arc<CachedResponse>> {
        let compiled = self.inner.current.load();
        compiled.policy.cache.stale_if_error?;
        let now = compiled.clock.now();
        match self.inner.cache.get_stale(cache_key(request), now) {
            Lookup::Hit(r) | Lookup::Stale(r) => Some(r),
            Lookup::Miss => None,
        }
    }

    /// Cache counters: hits, misses, stale hits, inserts, evictions, bytes, entries.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }
}
