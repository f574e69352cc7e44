//! Keyed budget state, bounded by a key capacity.
//!
//! Keys are 128-bit hashes of the scope values; cells live in 16 LRU shards, each behind its own
//! lock, so calls on different keys rarely meet. At capacity the least recently used *idle* cell is
//! evicted (see [`super::cell::Cell::is_idle`]): forgetting it changes no decision, so eviction never
//! makes a limit looser. When every candidate is busy the new key is refused instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use super::cell::Cell;
use crate::clock::Nanos;

const SHARDS: usize = 16;
/// How many least-recently-used cells are looked at for an idle one, per shard.
const EVICTION_SCAN: usize = 8;

/// The cells of one budget.
#[derive(Debug)]
pub(crate) enum Cells {
    /// An unscoped budget: one cell for every call.
    Global(Arc<Cell>),
    /// A scoped budget: one cell per distinct key.
    Keyed(Keyed),
}

type Shard = Mutex<LruCache<u128, Arc<Cell>>>;

/// Sharded LRU of cells.
#[derive(Debug)]
pub(crate) struct Keyed {
    shards: Box<[Shard]>,
    len: AtomicUsize,
    capacity: AtomicUsize,
}

/// Every idle candidate was busy and the budget is at its key capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapacityFull(pub usize);

/// 128-bit key hash of scope parts; parts are length-prefixed so ("ab","c") ≠ ("a","bc").
/// XXH3-128 in one pass over a stack buffer; keys longer than the buffer are streamed.
pub(crate) fn key_hash<'a>(parts: impl Iterator<Item = &'a str> + Clone) -> u128 {
    let mut buf = [0u8; 192];
    let mut len = 0;
    for p in parts.clone() {
        let bytes = p.as_bytes();
        let need = 4 + bytes.len();
        if len + need > buf.len() {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            for p in parts {
                h.update(&(p.len() as u32).to_le_bytes());
                h.update(p.as_bytes());
            }
            return h.digest128();
        }
        buf[len..len + 4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        buf[len + 4..len + need].copy_from_slice(bytes);
        len += need;
    }
    xxhash_rust::xxh3::xxh3_128(&buf[..len])
}

impl Keyed {
    pub(crate) fn new(capacity: usize) -> Keyed {
        Keyed {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::unbounded()))
                .collect(),
            len: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity.max(1)),
        }
    }

    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Release);
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn shard(&self, hash: u128) -> &Shard {
        &self.shards[(hash as usize) % SHARDS]
    }

    /// The cell for `hash`, made with `make_key` when new.
    #[inline]
    pub(crate) fn get_or_insert(
        &self,
        hash: u128,
        make_key: impl FnOnce() -> Arc<str>,
        shared: &Arc<super::BudgetShared>,
        now: Nanos,
    ) -> Result<Arc<Cell>, CapacityFull> {
        let shard = self.shard(hash);
        {
            let mut map = shard.lock();
            if let Some(cell) = map.get(&hash) {
                return Ok(Arc::clone(cell));
            }
        }
        let capacity = self.capacity.load(Ordering::Acquire);
        let cell = Arc::new(Cell::new(make_key(), Arc::clone(shared)));
        // Make room first (possibly in other shards), then insert under this shard's lock.
        while self.len.load(Ordering::Acquire) >= capacity {
            if !self.evict_one(hash, now) {
                // Another thread may have inserted the key meanwhile.
                if let Some(existing) = shard.lock().get(&hash) {
                    return Ok(Arc::clone(existing));
                }
                return Err(CapacityFull(capacity));
            }
        }
        let mut map = shard.lock();
        if let Some(existing) = map.get(&hash) {
            return Ok(Arc::clone(existing));
        }
        map.put(hash, Arc::clone(&cell));
        self.len.fetch_add(1, Ordering::AcqRel);
        Ok(cell)
    }

    /// Evicts one idle cell, starting with the shard of `hash`. A cell still referenced by a
    /// permit or a waiter is never idle.
    fn evict_one(&self, hash: u128, now: Nanos) -> bool {
        let first = (hash as usize) % SHARDS;
        for i in 0..SHARDS {
            let mut map = self.shards[(first + i) % SHARDS].lock();
            let victim = map
                .iter()
                .rev()
                .take(EVICTION_SCAN)
                .find(|(_, c)| Arc::strong_count(c) == 1 && c.is_idle(now))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                map.pop(&k);
                self.len.fetch_sub(1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }

    /// Calls `f` on every cell, one shard lock at a time.
    pub(crate) fn for_each(&self, f: &mut impl FnMut(&Cell)) {
        for shard in self.shards.iter() {
            for (_, cell) in shard.lock().iter() {
                f(cell);
            }
        }
    }

    /// Looks a key up without touching recency.
    pub(crate) fn peek(&self, hash: u128) -> Option<Arc<Cell>> {
        self.shard(hash).lock().peek(&hash).cloned()
    }
}
