//! Exact token counts for OpenAI's `o200k_base` and `cl100k_base` vocabularies.
//!
//! Backed by the `bpe-openai` crate (GitHub `rust-gems`), which embeds the vocabularies
//! (pre-compiled at build time, nothing is read at run time) and counts in linear time, so a
//! hostile prompt (a megabyte of one letter, of spaces) costs the same per byte as prose. Each
//! vocabulary is deserialized once, on first use (a process-wide lazily initialised static,
//! thread-safe); [`warm_up`] moves that cost (~25–60 ms) out of the first request.

use super::Encoding;

fn tokenizer(encoding: Encoding) -> &'static bpe_openai::Tokenizer {
    match encoding {
        Encoding::O200kBase => bpe_openai::o200k_base(),
        Encoding::Cl100kBase => bpe_openai::cl100k_base(),
    }
}

/// Counts the tokens of `text` exactly as OpenAI's tiktoken does with `encoding`.
///
/// The text is encoded as ordinary text: special-token strings such as `<|endoftext|>` are
/// counted as the characters they are, which is what the API does with user content.
///
/// Texts counted before are remembered (bounded; see the memo's module docs), so the system
/// prompt and history sent again with every call are not counted again.
///
/// ```
/// use tollgate::tokens::{count, Encoding};
/// assert_eq!(count(Encoding::O200kBase, "hello world"), 2);
/// assert_eq!(count(Encoding::Cl100kBase, "今天天气很好，我们一起去公园散步吧。"), 22);
/// assert_eq!(count(Encoding::O200kBase, ""), 0);
/// ```
pub fn count(encoding: Encoding, text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    super::memo::count(encoding, text, |t| tokenizer(encoding).count(t))
}

/// The count of `text` when it is at most `limit` tokens, else `None`, without the memo.
///
/// The same vocabulary and the same answer as [`count`], but it stops soon after `limit`
/// tokens, so asking whether a megabyte fits in a thousand tokens costs about a thousand
/// tokens of work. Used by the splitter, whose pieces are counted once: remembering them would
/// only evict the texts applications send again.
pub(super) fn count_within(encoding: Encoding, text: &str, limit: usize) -> Option<usize> {
    let t = tokenizer(encoding);
    t.count_till_limit(&t.normalize(text), limit)
}

/// The byte offsets (relative to `text`) where each token of `text` ends, in order. A token may
/// end inside a UTF-8 character (byte-level tokens of rare characters).
pub(super) fn token_ends(encoding: Encoding, text: &str) -> Vec<usize> {
    let t = tokenizer(encoding);
    let mut end = 0;
    t.encode(text)
        .into_iter()
        .map(|id| {
            end += t.bpe.token_len(id);
            end
        })
        .collect()
}

/// Loads the vocabulary of `encoding` now instead of on the first [`count`].
///
/// Calling it more than once, from any thread, is cheap.
///
/// ```
/// tollgate::tokens::warm_up(tollgate::tokens::Encoding::O200kBase);
/// ```
pub fn warm_up(encoding: Encoding) {
    let _ = tokenizer(encoding).count("warm up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_tiny() {
        for e in [Encoding::O200kBase, Encoding::Cl100kBase] {
            assert_eq!(count(e, ""), 0);
            assert_eq!(count(e, "a"), 1);
            assert_eq!(count(e, " "), 1);
        }
    }

    #[test]
    fn known_counts() {
        assert_eq!(count(Encoding::O200kBase, "hello world"), 2);
        assert_eq!(
            count(Encoding::O200kBase, "今天天气很好，我们一起去公园散步吧。"),
            13
        );
        assert_eq!(
            count(Encoding::Cl100kBase, "今天天气很好，我们一起去公园散步吧。"),
            22
        );
    }

    #[test]
    fn special_token_text_is_ordinary() {
        // tiktoken's encode_ordinary: "<|endoftext|>" is several ordinary tokens, not one.
        assert!(count(Encoding::Cl100kBase, "<|endoftext|>") > 1);
        assert!(count(Encoding::O200kBase, "<|endoftext|>") > 1);
    }

    #[test]
    fn huge_degenerate_inputs_are_counted() {
        // 1 MB runs that make backtracking tokenizers overflow their stack or go quadratic.
        let spaces = " ".repeat(1 << 20);
        assert!(count(Encoding::O200kBase, &spaces) > 0);
        let letters = "a".repeat(1 << 20);
        assert_eq!(count(Encoding::O200kBase, &letters), (1 << 20) / 8);
    }

    #[test]
    fn counts_within_a_limit_agree_with_count() {
        let texts = [
            "hello world",
            "今天天气很好，我们一起去公园散步吧。",
            "a  b\n\n  c",
            "👍🏽 ok",
        ];
        for e in [Encoding::O200kBase, Encoding::Cl100kBase] {
            for t in texts {
                let n = count(e, t);
                assert_eq!(count_within(e, t, n), Some(n), "{t:?}");
                assert_eq!(count_within(e, t, n + 5), Some(n), "{t:?}");
                assert_eq!(count_within(e, t, n - 1), None, "{t:?}");
                let ends = token_ends(e, t);
                assert_eq!((ends.len(), ends.last()), (n, Some(&t.len())), "{t:?}");
            }
        }
        let letters = "a".repeat(1 << 20);
        assert_eq!(count_within(Encoding::O200kBase, &letters, 1000), None);
    }

    #[test]
    fn counts_from_many_threads() {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let e = if i % 2 == 0 {
                        Encoding::O200kBase
                    } else {
                        Encoding::Cl100kBase
                    };
                    count(e, "hello world")
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("counting thread panicked"), 2);
        }
    }
}
