//! Counts of texts already counted, per vocabulary.
//!
//! Exact counting is linear but costs tens of nanoseconds a byte (and an allocation per text,
//! however short), and applications send the same texts again and again: the role names and the
//! system prompt of every call, a conversation's history on each turn. A text counted once is
//! looked up here the next time: a 128-bit hash of the vocabulary and the text (XXH3) and the
//! text's length name an entry; a hit costs a hash of the bytes.
//!
//! Each thread keeps its own table ([`SLOTS`] entries of 32 bytes, 32 KiB, made on the thread's
//! first count): no lock, no shared cache line, so threads counting the same system prompt never
//! wait for each other. A slot holds the last text whose hash chose it (a direct-mapped cache):
//! bounded, and a text seen often stays. Single bytes are counted every time. The count is the
//! vocabulary's own answer either way: the memo changes when it is computed, never what it is.

use std::cell::RefCell;

use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::Encoding;

/// Entries per thread (a power of two).
pub(crate) const SLOTS: usize = 1024;
/// Shorter texts are not remembered.
pub(crate) const MIN_BYTES: usize = 2;

#[derive(Clone, Copy, Default)]
struct Entry {
    hash: u128,
    /// Length of the text in bytes (0: empty slot; no remembered text is empty).
    len: u64,
    count: u64,
}

thread_local! {
    static MEMO: RefCell<Option<Box<[Entry]>>> = const { RefCell::new(None) };
}

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
    let len = text.len() as u64;
    let slot = (hash as usize) & (SLOTS - 1);
    let found = MEMO
        .try_with(|m| {
            let m = m.borrow();
            let e = m.as_ref()?[slot];
            (e.hash == hash && e.len == len).then_some(e.count)
        })
        .ok()
        .flatten();
    if let Some(n) = found {
        return n as usize;
    }
    let n = count(text);
    // A thread being torn down has no table: it just counts.
    let _ = MEMO.try_with(|m| {
        let mut m = m.borrow_mut();
        let table = m.get_or_insert_with(|| vec![Entry::default(); SLOTS].into_boxed_slice());
        table[slot] = Entry {
            hash,
            len,
            count: n as u64,
        };
    });
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
    fn single_bytes_are_counted_every_time() {
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
    fn stays_bounded_and_keeps_answering() {
        for i in 0..(SLOTS * 4) {
            let text = format!("distinct text number {i:08} for the bound");
            assert_eq!(count(Encoding::Cl100kBase, &text, |t| t.len()), text.len());
        }
        let held = MEMO.with(|m| m.borrow().as_ref().map_or(0, |t| t.len()));
        assert_eq!(held, SLOTS);
    }

    #[test]
    fn each_thread_has_its_own_table() {
        let text = "the same system prompt, counted on two threads";
        count(Encoding::O200kBase, text, |_| 5);
        let elsewhere = std::thread::spawn(move || {
            let mut calls = 0;
            let n = count(Encoding::O200kBase, text, |_| {
                calls += 1;
                5
            });
            (n, calls)
        })
        .join()
        .expect("the thread ran");
        assert_eq!(elsewhere, (5, 1));
    }
}
