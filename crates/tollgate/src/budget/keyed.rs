//! Keyed budget state, bounded by a key capacity.
//!
//! Keys are 128-bit hashes of the scope values. Cells live in 16 shards, each a hash map with the
//! key stored inline (one cache miss to find a cell, none to update recency: the cell records its
//! last use itself) behind its own lock, so calls on different keys rarely meet.
//!
//! At capacity an *idle* cell is evicted (see [`super::cell::Cell::is_idle`]): forgetting it
//! changes no decision, so eviction never makes a limit looser. Among idle cells the least
//! recently used of a random sample of [`SAMPLE`] is chosen, as Redis does; when the sample holds
//! no idle cell, every shard is searched in full before the new key is refused. The order only
//! decides *which* idle key goes, never whether a limit holds.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::cell::Cell;
use crate::clock::Nanos;
use crate::rng::SharedSplitMix64;

const SHARDS: usize = 16;
/// Cells looked at per eviction before a full search.
pub(crate) const SAMPLE: usize = 16;

/// The keys are already uniform 128-bit hashes: the map uses their low 64 bits as is.
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

/// The hasher state of [`PassThrough`].
struct Passed(u64);

impl BuildHasher for PassThrough {
    type Hasher = Passed;
    fn build_hasher(&self) -> Passed {
        Passed(0)
    }
}

impl Hasher for Passed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u128 keys, which this map never has; fold anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// One shard: the cells by key, and the keys in a vector for sampling (each cell's position in
/// it is kept beside the cell).
#[derive(Debug, Default)]
struct Shard {
    cells: HashMap<u128, (Arc<Cell>, usize), PassThrough>,
    keys: Vec<u128>,
}

impl Shard {
    fn insert(&mut self, key: u128, cell: Arc<Cell>) {
        self.cells.insert(key, (cell, self.keys.len()));
        self.keys.push(key);
    }

    fn remove(&mut self, key: u128) {
        if let Some((_, pos)) = self.cells.remove(&key) {
            self.keys.swap_remove(pos);
            if let Some(moved) = self.keys.get(pos)
                && let Some(entry) = self.cells.get_mut(moved)
            {
                entry.1 = pos;
            }
        }
    }

    /// The least recently used evictable cell among `keys`.
    fn pick<'a>(&self, keys: impl Iterator<Item = &'a u128>, now: Nanos) -> Option<u128> {
        keys.filter_map(|k| self.cells.get(k).map(|(c, _)| (*k, c)))
            .filter(|(_, c)| Arc::strong_count(c) == 1 && c.is_idle(now))
            .min_by_key(|(_, c)| c.last_used.load(Ordering::Relaxed))
            .map(|(k, _)| k)
    }
}

/// The cells of one budget.
#[derive(Debug)]
pub(crate) enum Cells {
    /// An unscoped budget: one cell for every call.
    Global(Arc<Cell>),
    /// A scoped budget: one cell per distinct key.
    Keyed(Keyed),
}

/// Sharded map of cells with a key capacity.
#[derive(Debug)]
pub(crate) struct Keyed {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
    capacity: AtomicUsize,
    rng: SharedSplitMix64,
}

/// Every idle candidate was busy and the budget is at its key capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapacityFull(pub usize);

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
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            len: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity.max(1)),
            rng: SharedSplitMix64::new(0x2545_f491_4f6c_dd1d),
        }
    }

    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Release);
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The high half picks the shard, so the map inside sees independent bits.
    fn shard(&self, hash: u128) -> &Mutex<Shard> {
        &self.shards[((hash >> 64) as usize) % SHARDS]
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
        if let Some((cell, _)) = shard.lock().cells.get(&hash) {
            cell.last_used.store(now, Ordering::Relaxed);
            return Ok(Arc::clone(cell));
        }
        let capacity = self.capacity.load(Ordering::Acquire);
        let cell = Arc::new(Cell::new(make_key(), Arc::clone(shared)));
        cell.last_used.store(now, Ordering::Relaxed);
        // Make room first (possibly in other shards), then insert under this shard's lock.
        while self.len.load(Ordering::Acquire) >= capacity {
            if !self.evict_one(hash, now) {
                // Another thread may have inserted the key meanwhile.
                if let Some((existing, _)) = shard.lock().cells.get(&hash) {
                    return Ok(Arc::clone(existing));
                }
                return Err(CapacityFull(capacity));
            }
        }
        let mut map = shard.lock();
        if let Some((existing, _)) = map.cells.get(&hash) {
            return Ok(Arc::clone(existing));
        }
        map.insert(hash, Arc::clone(&cell));
        self.len.fetch_add(1, Ordering::AcqRel);
        Ok(cell)
    }

    fn random(&self) -> u64 {
        self.rng.next_u64()
    }

    /// Evicts one idle cell: the least recently used of a random sample in each shard (starting
    /// with the new key's), then, failing that, of a full search. A cell still referenced by a
    /// permit or a waiter is never idle.
    fn evict_one(&self, hash: u128, now: Nanos) -> bool {
        let first = ((hash >> 64) as usize) % SHARDS;
        for full in [false, true] {
            for i in 0..SHARDS {
                let mut shard = self.shards[(first + i) % SHARDS].lock();
                let n = shard.keys.len();
                if n == 0 {
                    continue;
                }
                let victim = if full || n <= SAMPLE {
                    shard.pick(shard.keys.iter(), now)
                } else {
                    let picks: [u128; SAMPLE] =
                        std::array::from_fn(|_| shard.keys[(self.random() % n as u64) as usize]);
                    shard.pick(picks.iter(), now)
                };
                if let Some(k) = victim {
                    shard.remove(k);
                    self.len.fetch_sub(1, Ordering::AcqRel);
                    return true;
                }
            }
        }
        false
    }

    /// Calls `f` on every cell, one shard lock at a time.
    pub(crate) fn for_each(&self, f: &mut impl FnMut(&Cell)) {
        for shard in self.shards.iter() {
            for (cell, _) in shard.lock().cells.values() {
                f(cell);
            }
        }
    }

    /// Looks a key up without touching recency.
    pub(crate) fn peek(&self, hash: u128) -> Option<Arc<Cell>> {
        self.shard(hash)
            .lock()
            .cells
            .get(&hash)
            .map(|(c, _)| Arc::clone(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_keeps_positions_consistent() {
        let mut shard = Shard::default();
        let shared = crate::budget::BudgetState::new(
            "b",
            true,
            10,
            Arc::new(crate::clock::ManualClock::new()),
        )
        .shared;
        for k in 0..5u128 {
            shard.insert(k, Arc::new(Cell::new(Arc::from(""), Arc::clone(&shared))));
        }
        shard.remove(1);
        shard.remove(4);
        for (i, k) in shard.keys.iter().enumerate() {
            assert_eq!(shard.cells[k].1, i);
        }
        assert_eq!(shard.cells.len(), 3);
    }
}
