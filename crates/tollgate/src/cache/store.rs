//! The response store: an LRU bounded in bytes, with a TTL and a stale-if-error window.
//!
//! # Layout
//!
//! Entries live in [`SHARDS`] shards, chosen by the high bits of the key, each an `lru` list
//! behind its own `parking_lot` mutex, so lookups of different keys rarely meet on a lock. The
//! byte budget is **global**: one atomic sum of every entry's size. A per-shard split would be
//! simpler but would refuse an entry bigger than `max_bytes / SHARDS` (the default
//! `max_entry_bytes` is `max_bytes / 8`) and would evict from a full shard while others sit
//! empty.
//!
//! Eviction is least-recently-used across all shards: each shard publishes the last-use time of
//! its own least recent entry in an atomic, and an insert that takes the total over budget
//! evicts from the shard whose least recent entry is oldest, until the total fits. Recency is
//! the `now` of the last hit (or the insert), so it is read from the caller's clock; entries used
//! at the same nanosecond are equally recent.
//!
//! # Expiry
//!
//! An entry is fresh while its age (`now - stored_at`) is below the TTL, then stale while below
//! TTL + `stale_if_error`, then expired. [`get`](CacheStore::get) answers only fresh entries;
//! [`get_stale`](CacheStore::get_stale), for when every target has failed, answers stale ones
//! too. Expired entries are removed when a lookup finds them, when the LRU reaches them and by
//! [`purge_expired`](CacheStore::purge_expired). Limits changed by
//! [`set_limits`](CacheStore::set_limits) apply at once to entries already stored.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;
use thiserror::Error;

use super::key::CacheKey;
use crate::clock::Nanos;
use crate::policy::Cache;
use crate::tokens::Usage;

/// Number of shards of a [`CacheStore`].
pub const SHARDS: usize = 16;

/// Bytes counted for every entry on top of its body and events: the response record, its
/// reference counts, the LRU node and its hash slot (an estimate, fixed so sizes are
/// predictable).
pub const ENTRY_OVERHEAD: u64 = 256;

/// Bytes counted for each stored event on top of its text.
pub const EVENT_OVERHEAD: u64 = std::mem::size_of::<SseEvent>() as u64;

/// One server-sent event of a streamed response, stored to be replayed as it came.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, when the upstream sent one.
    pub event: Option<String>,
    /// The `data:` payload (lines joined with `\n`), e.g. a `chat.completion.chunk` JSON.
    pub data: String,
    /// The `id:` field, when the upstream sent one.
    pub id: Option<String>,
}

impl SseEvent {
    /// An event with only a `data:` payload.
    ///
    /// ```
    /// let e = tollgate::cache::SseEvent::data("[DONE]");
    /// assert_eq!(e.data, "[DONE]");
    /// ```
    pub fn data(data: impl Into<String>) -> SseEvent {
        SseEvent {
            event: None,
            data: data.into(),
            id: None,
        }
    }

    fn footprint(&self) -> u64 {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        (self.data.len() + opt(&self.event) + opt(&self.id)) as u64 + EVENT_OVERHEAD
    }
}

/// A stored upstream answer.
///
/// `size` and `stored_at` are set by the store on insert; the other fields are the answer.
///
/// ```
/// use tollgate::cache::{CachedResponse, SseEvent, ENTRY_OVERHEAD};
/// let r = CachedResponse::new(200, &b"{\"id\":\"x\"}"[..]);
/// assert_eq!(r.size(), 10 + ENTRY_OVERHEAD);
/// let s = r.with_events(vec![SseEvent::data("{}"), SseEvent::data("[DONE]")]);
/// assert!(s.size() > 10 + ENTRY_OVERHEAD);
/// ```
#[derive(Debug, Clone)]
pub struct CachedResponse {
    /// HTTP status of the answer (normally 200).
    pub status: u16,
    /// The JSON response body (for a stream, the assembled completion if the caller has one).
    pub body: Arc<[u8]>,
    /// For a streamed answer, its events in order, replayed as they came.
    pub events: Option<Arc<[SseEvent]>>,
    /// The usage the upstream reported, for accounting a hit (which costs nothing upstream).
    pub usage: Option<Usage>,
    stored_at: Nanos,
    size: u64,
}

impl CachedResponse {
    /// An answer with a JSON body and no events or usage.
    pub fn new(status: u16, body: impl Into<Arc<[u8]>>) -> CachedResponse {
        let mut r = CachedResponse {
            status,
            body: body.into(),
            events: None,
            usage: None,
            stored_at: 0,
            size: 0,
        };
        r.size = r.footprint();
        r
    }

    /// The same answer with the events of its stream.
    pub fn with_events(mut self, events: impl Into<Arc<[SseEvent]>>) -> CachedResponse {
        self.events = Some(events.into());
        self.size = self.footprint();
        self
    }

    /// The same answer with its reported usage.
    pub fn with_usage(mut self, usage: Usage) -> CachedResponse {
        self.usage = Some(usage);
        self
    }

    /// Bytes this entry counts against the cache: body + events + [`ENTRY_OVERHEAD`].
    pub fn size(&self) -> u64 {
        self.size
    }

    /// When the store took it (the `now` given to [`CacheStore::insert`]).
    pub fn stored_at(&self) -> Nanos {
        self.stored_at
    }

    /// Nanoseconds since it was stored.
    pub fn age(&self, now: Nanos) -> Nanos {
        now.saturating_sub(self.stored_at)
    }

    fn footprint(&self) -> u64 {
        let events = self
            .events
            .as_deref()
            .map_or(0, |es| es.iter().map(SseEvent::footprint).sum());
        self.body.len() as u64 + events + ENTRY_OVERHEAD
    }
}

/// The answer of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A fresh entry.
    Hit(Arc<CachedResponse>),
    /// An entry past its TTL but within `stale_if_error`: only from
    /// [`CacheStore::get_stale`], to answer when every target has failed, marked as stale.
    Stale(Arc<CachedResponse>),
    /// Nothing usable.
    Miss,
}

impl Lookup {
    /// Whether this is a fresh hit.
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }

    /// The response of a hit or a stale hit.
    pub fn response(&self) -> Option<&Arc<CachedResponse>> {
        match self {
            Lookup::Hit(r) | Lookup::Stale(r) => Some(r),
            Lookup::Miss => None,
        }
    }
}

/// Why [`CacheStore::insert`] did not store an answer. Nothing was evicted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refused {
    /// The answer is larger than `max_entry_bytes`.
    #[error(
        "response of {size} bytes is larger than [cache] max_entry_bytes = {max_entry_bytes}; \
         it is not cached (raise max_entry_bytes to cache it)"
    )]
    EntryTooLarge {
        /// Bytes the answer would count.
        size: u64,
        /// The limit.
        max_entry_bytes: u64,
    },
    /// The answer is larger than the whole cache.
    #[error(
        "response of {size} bytes is larger than the whole cache ([cache] max_bytes = \
         {max_bytes}); it is not cached"
    )]
    LargerThanCache {
        /// Bytes the answer would count.
        size: u64,
        /// The limit.
        max_bytes: u64,
    },
}

impl Refused {
    /// A stable machine-readable name: `entry_too_large` or `larger_than_cache`.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::EntryTooLarge { .. } => "entry_too_large",
            Refused::LargerThanCache { .. } => "larger_than_cache",
        }
    }
}

/// Counters of a [`CacheStore`] since it was made (`bytes` and `entries` are current).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fresh hits ([`Lookup::Hit`]), from `get` and `get_stale`.
    pub hits: u64,
    /// `get` calls that found nothing fresh (`get_stale` counts no misses: it follows a `get`).
    pub misses: u64,
    /// Stale answers given by `get_stale`.
    pub stale_hits: u64,
    /// Answers stored (replacing one counts too).
    pub inserts: u64,
    /// Answers refused by `insert` as too large.
    pub refused: u64,
    /// Entries evicted to fit the byte budget.
    pub evictions: u64,
    /// Entries removed because they were past TTL + stale window.
    pub expired: u64,
    /// Bytes currently counted.
    pub bytes: u64,
    /// Entries currently stored.
    pub entries: u64,
}

/// A thread-safe response cache, bounded in bytes, with TTL (see the [module docs](self)).
///
/// ```
/// use std::time::Duration;
/// use tollgate::cache::{CacheKey, CacheStore, CachedResponse, Lookup};
///
/// let store = CacheStore::new(1 << 20, 1 << 16, Duration::from_secs(60), None);
/// let key = CacheKey(42);
/// store.insert(key, CachedResponse::new(200, &b"{}"[..]), 0).unwrap();
/// assert!(store.get(key, 1_000).is_hit());
/// assert!(matches!(store.get(key, 61_000_000_000), Lookup::Miss)); // past the TTL
/// ```
#[derive(Debug)]
pub struct CacheStore {
    shards: Box<[Shard]>,
    bytes: AtomicU64,
    refused: AtomicU64,
    max_bytes: AtomicU64,
    max_entry_bytes: AtomicU64,
    ttl: AtomicU64,
    stale: AtomicU64,
}

/// One shard, on its own cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    inner: Mutex<ShardInner>,
    /// `last_used` of this shard's least recent entry; `u64::MAX` when empty. Written under the
    /// lock, read without it by eviction.
    oldest: AtomicU64,
}

#[derive(Debug)]
struct ShardInner {
    lru: LruCache<u128, Entry, KeyHashBuilder>,
    hits: u64,
    misses: u64,
    stale_hits: u64,
    inserts: u64,
    evictions: u64,
    expired: u64,
}

#[derive(Debug)]
struct Entry {
    response: Arc<CachedResponse>,
    last_used: Nanos,
}

/// Keys are already XXH3 output: the map uses their low 64 bits as they are.
#[derive(Debug, Clone, Copy, Default)]
struct KeyHashBuilder;

#[derive(Debug, Default)]
struct KeyHasher(u64);

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for u128 keys; a plain FNV-1a keeps it correct for anything else.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64; // the low half; the shard index uses the high half
    }
}

enum Freshness {
    Fresh,
    Stale,
    Expired,
}

impl ShardInner {
    fn oldest(&self) -> u64 {
        self.lru.peek_lru().map_or(u64::MAX, |(_, e)| e.last_used)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl CacheStore {
    /// An empty store. `ttl` is how long an entry answers; `stale_if_error` how long past that
    /// it may still answer [`get_stale`](CacheStore::get_stale) (`None`: never).
    pub fn new(
        max_bytes: u64,
        max_entry_bytes: u64,
        ttl: Duration,
        stale_if_error: Option<Duration>,
    ) -> CacheStore {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                inner: Mutex::new(ShardInner {
                    lru: LruCache::unbounded_with_hasher(KeyHashBuilder),
                    hits: 0,
                    misses: 0,
                    stale_hits: 0,
                    inserts: 0,
                    evictions: 0,
                    expired: 0,
                }),
                oldest: AtomicU64::new(u64::MAX),
            })
            .collect();
        let store = CacheStore {
            shards,
            bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            max_bytes: AtomicU64::new(0),
            max_entry_bytes: AtomicU64::new(0),
            ttl: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        };
        store.set_limits(max_bytes, max_entry_bytes, ttl, stale_if_error);
        store
    }

    /// An empty store with the limits of a policy's `[cache]`.
    pub fn from_policy(policy: &Cache) -> CacheStore {
        CacheStore::new(
            policy.max_bytes,
            policy.max_entry_bytes,
            policy.ttl,
            policy.stale_if_error,
        )
    }

    /// Changes the limits (a policy reload). They apply at once to stored entries; when the new
    /// `max_bytes` is below the bytes stored, least recent entries are evicted until it fits.
    pub fn set_limits(
        &self,
        max_bytes: u64,
        max_entry_bytes: u64,
        ttl: Duration,
        stale_if_error: Option<Duration>,
    ) {
        self.max_bytes.store(max_bytes, Relaxed);
        self.max_entry_bytes.store(max_entry_bytes, Relaxed);
        self.ttl.store(nanos(ttl), Relaxed);
        self.stale.store(stale_if_error.map_or(0, nanos), Relaxed);
        self.evict_to(max_bytes, None);
    }

    /// [`set_limits`](CacheStore::set_limits) from a policy's `[cache]`.
    pub fn apply_policy(&self, policy: &Cache) {
        self.set_limits(
            policy.max_bytes,
            policy.max_entry_bytes,
            policy.ttl,
            policy.stale_if_error,
        );
    }

    fn shard(&self, key: CacheKey) -> &Shard {
        &self.shards[(key.0 >> 64) as usize % SHARDS]
    }

    fn freshness(&self, response: &CachedResponse, now: Nanos) -> Freshness {
        let age = response.age(now);
        let ttl = self.ttl.load(Relaxed);
        if age < ttl {
            Freshness::Fresh
        } else if age - ttl < self.stale.load(Relaxed) {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// A fresh answer for `key`, or [`Lookup::Miss`] (never [`Lookup::Stale`]). A hit makes
    /// the entry the most recent; an entry found past TTL + stale window is removed.
    pub fn get(&self, key: CacheKey, now: Nanos) -> Lookup {
        self.lookup(key, now, false)
    }

    /// Like [`get`](CacheStore::get), but an entry past its TTL and within `stale_if_error`
    /// answers as [`Lookup::Stale`]: for when every target has failed. Does not count a miss.
    pub fn get_stale(&self, key: CacheKey, now: Nanos) -> Lookup {
        self.lookup(key, now, true)
    }

    fn lookup(&self, key: CacheKey, now: Nanos, stale_ok: bool) -> Lookup {
        let shard = self.shard(key);
        let mut s = shard.inner.lock();
        let Some(entry) = s.lru.peek(&key.0) else {
            if !stale_ok {
                s.misses += 1;
            }
            return Lookup::Miss;
        };
        match self.freshness(&entry.response, now) {
            Freshness::Fresh => {
                let entry = s.lru.get_mut(&key.0).expect("peeked under the same lock");
                entry.last_used = entry.last_used.max(now);
                let response = Arc::clone(&entry.response);
                s.hits += 1;
                shard.oldest.store(s.oldest(), Relaxed);
                Lookup::Hit(response)
            }
            Freshness::Stale if stale_ok => {
                let response = Arc::clone(&entry.response);
                s.stale_hits += 1;
                Lookup::Stale(response)
            }
            Freshness::Stale => {
                s.misses += 1;
                Lookup::Miss
            }
            Freshness::Expired => {
                let size = entry.response.size;
                s.lru.pop(&key.0);
                s.expired += 1;
                if !stale_ok {
                    s.misses += 1;
                }
                self.bytes.fetch_sub(size, Relaxed);
                shard.oldest.store(s.oldest(), Relaxed);
                Lookup::Miss
            }
        }
    }

    /// Stores `response` under `key` at time `now`, replacing any entry for the key, then evicts
    /// least recent entries until the cache fits its byte budget.
    ///
    /// An answer larger than `max_entry_bytes` or than the whole cache is refused and evicts
    /// nothing.
    pub fn insert(
        &self,
        key: CacheKey,
        mut response: CachedResponse,
        now: Nanos,
    ) -> Result<(), Refused> {
        let size = response.footprint();
        let max_entry_bytes = self.max_entry_bytes.load(Relaxed);
        let max_bytes = self.max_bytes.load(Relaxed);
        if size > max_entry_bytes {
            self.refused.fetch_add(1, Relaxed);
            return Err(Refused::EntryTooLarge {
                size,
                max_entry_bytes,
            });
        }
        if size > max_bytes {
            self.refused.fetch_add(1, Relaxed);
            return Err(Refused::LargerThanCache { size, max_bytes });
        }
        response.size = size;
        response.stored_at = now;
        let entry = Entry {
            response: Arc::new(response),
            last_used: now,
        };
        let shard = self.shard(key);
        {
            let mut s = shard.inner.lock();
            let replaced = s.lru.put(key.0, entry);
            s.inserts += 1;
            self.bytes.fetch_add(size, Relaxed);
            if let Some(old) = replaced {
                self.bytes.fetch_sub(old.response.size, Relaxed);
            }
            shard.oldest.store(s.oldest(), Relaxed);
        }
        self.evict_to(max_bytes, Some(key));
        Ok(())
    }

    /// Removes the entry for `key`; whether there was one.
    pub fn remove(&self, key: CacheKey) -> bool {
        let shard = self.shard(key);
        let mut s = shard.inner.lock();
        match s.lru.pop(&key.0) {
            Some(old) => {
                self.bytes.fetch_sub(old.response.size, Relaxed);
                shard.oldest.store(s.oldest(), Relaxed);
                true
            }
            None => false,
        }
    }

    /// Removes every entry past TTL + stale window; returns how many. Lookups and the LRU remove
    /// them too; this is for a periodic sweep, and walks every entry.
    pub fn purge_expired(&self, now: Nanos) -> u64 {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut s = shard.inner.lock();
            let mut freed = 0;
            let mut count = 0;
            s.lru.retain(|_, e| {
                let keep = !matches!(self.freshness(&e.response, now), Freshness::Expired);
                if !keep {
                    freed += e.response.size;
                    count += 1;
                }
                keep
            });
            s.expired += count;
            self.bytes.fetch_sub(freed, Relaxed);
            shard.oldest.store(s.oldest(), Relaxed);
            removed += count;
        }
        removed
    }

    /// Removes every entry (counters other than `bytes` and `entries` are kept).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut s = shard.inner.lock();
            let freed: u64 = s.lru.iter().map(|(_, e)| e.response.size).sum();
            s.lru.clear();
            self.bytes.fetch_sub(freed, Relaxed);
            shard.oldest.store(u64::MAX, Relaxed);
        }
    }

    /// Evicts least recent entries (never `keep`) until at most `limit` bytes are stored.
    fn evict_to(&self, limit: u64, keep: Option<CacheKey>) {
        while self.bytes.load(Relaxed) > limit {
            // The shard whose least recent entry is oldest; ties go to the lower index.
            let mut order: [(u64, usize); SHARDS] = [(0, 0); SHARDS];
            for (i, shard) in self.shards.iter().enumerate() {
                order[i] = (shard.oldest.load(Relaxed), i);
            }
            order.sort_unstable();
            let mut evicted = false;
            for &(oldest, i) in &order {
                if oldest == u64::MAX {
                    break;
                }
                let shard = &self.shards[i];
                let mut s = shard.inner.lock();
                let Some((&k, _)) = s.lru.peek_lru() else {
                    continue;
                };
                if keep.is_some_and(|keep| keep.0 == k) {
                    // The kept entry was just made most recent: it is the tail only when it is
                    // alone in its shard.
                    continue;
                }
                let (_, old) = s.lru.pop_lru().expect("peeked under the same lock");
                s.evictions += 1;
                self.bytes.fetch_sub(old.response.size, Relaxed);
                shard.oldest.store(s.oldest(), Relaxed);
                evicted = true;
                break;
            }
            if !evicted {
                return; // only `keep` is left
            }
        }
    }

    /// The counters, summed over the shards.
    pub fn stats(&self) -> CacheStats {
        let mut st = CacheStats {
            refused: self.refused.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            ..CacheStats::default()
        };
        for shard in self.shards.iter() {
            let s = shard.inner.lock();
            st.hits += s.hits;
            st.misses += s.misses;
            st.stale_hits += s.stale_hits;
            st.inserts += s.inserts;
            st.evictions += s.evictions;
            st.expired += s.expired;
            st.entries += s.lru.len() as u64;
        }
        st
    }

    /// Bytes currently counted.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Entries currently stored.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.inner.lock().lru.len()).sum()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<CacheStore>();
        assert_send_sync::<CachedResponse>();
        assert_send_sync::<Lookup>();
    }

    #[test]
    fn shard_and_bucket_bits_differ() {
        let mut h = KeyHashBuilder.build_hasher();
        h.write_u128((7u128 << 64) | 3);
        assert_eq!(h.finish(), 3);
    }

    #[test]
    fn replacing_an_entry_keeps_the_byte_count_exact() {
        let s = CacheStore::new(1 << 20, 1 << 20, Duration::from_secs(1), None);
        let k = CacheKey(5);
        s.insert(k, CachedResponse::new(200, vec![0u8; 100]), 0)
            .expect("fits");
        s.insert(k, CachedResponse::new(200, vec![0u8; 50]), 1)
            .expect("fits");
        assert_eq!(s.bytes(), 50 + ENTRY_OVERHEAD);
        assert_eq!(s.len(), 1);
        assert!(s.remove(k));
        assert_eq!(s.bytes(), 0);
        assert!(!s.remove(k));
    }
}
