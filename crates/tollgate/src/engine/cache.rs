//! The response cache as the engine offers it: lookup with single-flight, store, stale-if-error.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clock::Nanos;
use crate::clock::duration_nanos;
use crate::store::{DiskCache, DiskState, RedisStore};

use crate::cache::{
    CacheKey, CacheMode, CacheStats, CachedResponse, Flight, FollowerWait, LeaderGuard, Lookup,
    NotCacheable, Refused, cache_key, cache_key_for, cacheable,
};
use crate::policy::{Cache, CacheScope};

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
    /// [`Engine::cache_lookup_async`]. With a disk level (`disk`), a call still missing reads
    /// the file on this thread (a pooled SQLite read, microseconds while the OS caches the
    /// file); a hit from below is kept in memory for what is left of its TTL.
    ///
    /// The call is the unnamed tenant's (`""`, as [`ChatRequest::new`](super::ChatRequest::new)
    /// has it); with the policy's default `scope = "tenant"` it sees only entries stored for
    /// that tenant. [`Engine::cache_lookup_for`] names the tenant.
    pub fn cache_lookup(&self, request: &Value, mode: CacheMode) -> CacheLookup {
        self.cache_lookup_for("", request, mode)
    }

    /// [`Engine::cache_lookup`] for a call of `tenant`. Under the policy's default
    /// `scope = "tenant"` the tenant is part of the key, so it finds only its own entries and
    /// waits only on its own calls in flight; with `scope = "shared"` the tenant is ignored.
    pub fn cache_lookup_for(&self, tenant: &str, request: &Value, mode: CacheMode) -> CacheLookup {
        let fill = match self.lookup_local(tenant, request, mode) {
            CacheLookup::Miss(fill) => fill,
            lookup => return lookup,
        };
        if let Some(store) = self.l2()
            && let Some((response, left)) = store.cache_get_blocking(fill.key).ok().flatten()
        {
            return self.found(fill, response, self.age_from_left(left));
        }
        self.disk_lookup(fill)
    }

    /// [`Engine::cache_lookup`] for async code: the lookup in the second level is awaited.
    pub async fn cache_lookup_async(&self, request: &Value, mode: CacheMode) -> CacheLookup {
        self.cache_lookup_async_for("", request, mode).await
    }

    /// [`Engine::cache_lookup_for`] for async code: the lookup in the second level is awaited.
    pub async fn cache_lookup_async_for(
        &self,
        tenant: &str,
        request: &Value,
        mode: CacheMode,
    ) -> CacheLookup {
        let fill = match self.lookup_local(tenant, request, mode) {
            CacheLookup::Miss(fill) => fill,
            lookup => return lookup,
        };
        if let Some(store) = self.l2()
            && let Some((response, left)) = store.cache_get(fill.key).await.ok().flatten()
        {
            return self.found(fill, response, self.age_from_left(left));
        }
        self.disk_lookup(fill)
    }

    /// The lookup in this process: the local cache, then single-flight.
    fn lookup_local(&self, tenant: &str, request: &Value, mode: CacheMode) -> CacheLookup {
        let compiled = self.inner.current.load();
        let rules = &compiled.policy.cache;
        if let Err(reason) = cacheable(request, rules, mode) {
            return CacheLookup::NotCacheable(reason);
        }
        let key = scoped_key(rules, tenant, request);
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

    /// The age of a Redis entry with `left` to live.
    fn age_from_left(&self, left: Duration) -> Duration {
        self.inner
            .current
            .load()
            .policy
            .cache
            .ttl
            .saturating_sub(left)
    }

    /// The disk level, when the running policy has one and it opened.
    fn disk(&self) -> Option<Arc<DiskCache>> {
        self.inner.disk.lock().as_ref().map(Arc::clone)
    }

    /// The last level: the disk file, after the memory level (and Redis) missed.
    fn disk_lookup(&self, fill: CacheFill) -> CacheLookup {
        let Some(disk) = self.disk() else {
            return CacheLookup::Miss(fill);
        };
        match disk.get(fill.key, self.inner.clock.now()) {
            Some((response, age)) => self.found(fill, response, age),
            None => CacheLookup::Miss(fill),
        }
    }

    /// A miss that a lower level (Redis, disk) answered: its entry, kept in memory too as old as
    /// it is there, and handed to the calls waiting on the key.
    fn found(&self, fill: CacheFill, response: CachedResponse, age: Duration) -> CacheLookup {
        let now = self.inner.clock.now();
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
        if stored.is_ok()
            && (200..300).contains(&shared.status)
            && let Some(disk) = self.disk()
        {
            disk.put(fill.key, Arc::clone(&shared), now);
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
    /// policy's `stale_if_error` may answer; the caller should mark the answer stale. The memory
    /// level is asked first, then the disk level when there is one. `None` when the policy has no
    /// stale window or nothing usable is stored. The call is the unnamed
    /// tenant's, as in [`Engine::cache_lookup`].
    pub fn cache_stale(&self, request: &Value) -> Option<Arc<CachedResponse>> {
        self.cache_stale_for("", request)
    }

    /// [`Engine::cache_stale`] for a call of `tenant` (scoped as in
    /// [`Engine::cache_lookup_for`]).
    pub fn cache_stale_for(&self, tenant: &str, request: &Value) -> Option<Arc<CachedResponse>> {
        let compiled = self.inner.current.load();
        compiled.policy.cache.stale_if_error?;
        let now = compiled.clock.now();
        let key = scoped_key(&compiled.policy.cache, tenant, request);
        match self.inner.cache.get_stale(key, now) {
            Lookup::Hit(r) | Lookup::Stale(r) => Some(r),
            // The disk level keeps rows for the stale window too (a restart empties memory).
            Lookup::Miss => self.disk()?.get_stale(key, now).map(Arc::new),
        }
    }

    /// Waits until the answers handed to the cache's disk level so far are written to its file
    /// (they are written in the background; a host may call this before exiting). Returns at
    /// once without a disk level.
    pub fn cache_flush(&self) {
        if let Some(disk) = self.disk() {
            disk.flush();
        }
    }

    /// How the cache's disk level came up (`[cache] disk`): open, started afresh after a
    /// corrupt file was moved aside, or unavailable and why. `None` without a disk level.
    pub fn cache_disk_state(&self) -> Option<DiskState> {
        self.inner.disk.lock().as_ref().map(|d| d.state().clone())
    }

    /// Cache counters: hits, misses, stale hits, inserts, evictions, bytes, entries.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }
}

/// The key of a call under the policy's `scope`: the tenant's own, or the one every tenant shares.
fn scoped_key(rules: &Cache, tenant: &str, request: &Value) -> CacheKey {
    match rules.scope {
        CacheScope::Tenant => cache_key_for(request, Some(tenant)),
        CacheScope::Shared => cache_key(request),
    }
}

/// The disk level for a (re)loaded policy: the current one when the path is the same (with the
/// new limits), a new one when it changed, none when the policy has none or the cache is off.
pub(super) fn open_disk(
    current: Option<Arc<DiskCache>>,
    rules: &Cache,
    now: Nanos,
) -> Option<Arc<DiskCache>> {
    let spec = rules.disk.as_ref().filter(|_| rules.enabled)?;
    let times = (rules.ttl, rules.stale_if_error.unwrap_or_default());
    if let Some(disk) = current.filter(|d| d.path() == spec.path) {
        disk.set_limits(spec.max_bytes, times);
        return Some(disk);
    }
    Some(Arc::new(DiskCache::open(
        &spec.path,
        spec.max_bytes,
        times,
        now,
    )))
}
