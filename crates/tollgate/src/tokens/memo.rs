//! Counts of texts already counted, per vocabulary.
//!
//! Exact counting is linear but costs tens of nanoseconds a byte, and applications send the same
//! texts again and again: the system prompt of every call, a conversation's history on each
//! turn. A text counted once is looked up here the next time: a 128-bit hash of the vocabulary
//! and the text (XXH3), and the text's length, name an entry; a hit costs a hash of the bytes and
//! one uncontended lock, a few percent of counting them.
//!
//! Bounded: [`SHARDS`] least-recently-used maps of [`PER_SHARD`] entries each (about 1.5 MiB in
//! all), chosen by the hash so threads counting different texts rarely meet; the maps index by the
//! hash itself (it is one already). Single bytes are counted every time. The count is the
//! vocabulary's own answer either way: the memo changes when it is computed, never what it is.

use std::num::NonZeroUsize;
use std::sync::LazyLock;

use lru::LruCache;
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::Encoding;

/// Independent maps, each behind its own lock.
pub(crate) const SHARDS: usize = 16;
/// Entries per map.
pub(crate) const PER_SHARD: usize = 1024;
/// Shorter texts are not remembered.
pub(crate) const MIN_BYTES: usize = 2;

/// (hash of vocabulary and text, text length in bytes).
type Key = (u128, u64);

static MEMO: LazyLock<Vec<Mutex<LruCache<Key, u64>>>> = LazyLock::new(|| {
    let cap = NonZeroUsize::new(PER_SHARD).expect("PER_SHARD is not zero");
    (0..SHARDS)
        .map(|_| Mutex::new(LruCache::new(cap)))
        .collect()
});

/// The count of `text` in `encoding`: remembered, or computed with `count` and remembered.
pub(crate) fn count(encoding: Encoding, text: &str, count: impl FnOnce(&str) -> usize) -> usize {
    if text.len() < MIN_BYTES {
        return count(text);
    }
    let seed = match encoding {
        Encoding::O200kBase => 0x6f32_3030_6b00_0001,
        Encoding::Cl100kBase => 0x636c_3130_306b_0002,
    };
    let hash = xxh3_128_with_seed(text.as_bytes(), seed);
    let key = (hash, text.len() as u64);
    let shard = &MEMO[(hash as usize) % SHARDS];
    if let Some(n) = shard.lock().get(&key) {
        return *n as usize;
    }
    // Counted outside the lock: a long text does not hold up other threads' lookups.
    let n = count(text);
    shard.lock().put(key, n as u64);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_vocabulary_and_text() {
        let text = "a text long enough to be remembered by the memo, for the test";
        let mut calls = 0;
        let first = count(Encoding::O200kBase, text, |t| {
            calls += 1;
            t.len()
        });
        let again = count(Encoding::O200kBase, text, |_| {
            calls += 1;
            0
        });
        assert_eq!((first, again, calls), (text.len(), text.len(), 1));
        // Another vocabulary, another text: counted.
        assert_eq!(count(Encoding::Cl100kBase, text, |_| 7), 7);
        assert_eq!(count(Encoding::O200kBase, &text[1..], |_| 9), 9);
    }

    #[test]
    fn short_texts_are_counted_every_time() {
        let mut calls = 0;
        for _ in 0..3 {
            count(Encoding::O200kBase, "s", |_| {
                calls += 1;
                1
            });
        }
        assert_eq!(calls, 3);
    }

    #[test]
    fn stays_bounded() {
        for i in 0..(SHARDS * PER_SHARD * 2) {
            let text = format!("distinct text number {i:08} for the bound");
            count(Encoding::Cl100kBase, &text, |t| t.len());
        }
        let held: usize = MEMO.iter().map(|s| s.lock().len()).sum();
        assert!(held <= SHARDS * PER_SHARD, "{held} entries");
    }
}
