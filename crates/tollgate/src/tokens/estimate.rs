//! A fast, allocation-free token estimate for models whose vocabulary is not bundled.

/// Quarter-token weights. Runs are costed when they end; everything is integer arithmetic.
const Q: u64 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    None,
    /// ASCII letters (a word or identifier piece).
    Letters,
    /// ASCII digits.
    Digits,
    /// Spaces and tabs.
    Blank,
    /// `\n` / `\r`.
    Newline,
    /// ASCII punctuation and symbols.
    Punct,
    /// Letters of alphabetic non-ASCII scripts (Latin extensions, Greek, Cyrillic, Arabic, ...).
    Alpha2,
}

/// Estimates the number of tokens of `text` for an unknown tokenizer.
///
/// One pass over the characters, no allocation, integer arithmetic only. It models a modern BPE
/// vocabulary (o200k-like): an ASCII word costs one token per started 6 letters, plus one per
/// lower→upper case change and a little per run of capitals (identifiers, base64); digits one
/// per three (and a space before digits one); punctuation runs about one per two characters;
/// whitespace runs one; every Han, Kana or Hangul character (and CJK punctuation) one; other
/// scripts by UTF-8 width (½ token for 2-byte letters, ¾ for 3-byte, 2 for emoji). The sum is
/// then raised by 1/6 plus one token, so that it errs high.
///
/// **Error bound** (measured on the reference table `tests/data/token_counts.json`, checked by
/// `tests/tokens_reference.rs`, and on a 9 MB corpus of 1,619 texts: Rust code, English and
/// 27 other languages of prose including Chinese, Japanese and Russian, JSON, base64
/// vocabularies, in chunks of 200 B, 1.5 kB and whole files): for every text,
///
/// `exact_o200k(text) <= estimate(text) <= 2 * max(exact_o200k, exact_cl100k) + 8`.
///
/// So it never under-reserves for an o200k-class tokenizer, and over-reserves by at most about
/// 2×. Typical ratios to o200k: 1.16 over the whole corpus, ~1.4 on English prose, ~1.6 on
/// code, 1.3–1.6 on Chinese and Japanese, 1.8 on Russian. Against the older `cl100k_base` it
/// can be low (down to 0.94× on Traditional Chinese; cl100k spends ~1.3–2 tokens per Han or
/// Hangul character and ~1 per Indic or Thai character). Use [`count`](super::count) whenever
/// the encoding is known.
///
/// ```
/// use tollgate::tokens::estimate;
/// assert_eq!(estimate(""), 0);
/// assert!(estimate("hello world") >= 2);
/// // 17 CJK characters: at least one token each.
/// assert!(estimate("今天天气很好，我们一起去公园散步吧。") >= 17);
/// ```
pub fn estimate(text: &str) -> usize {
    if text.is_empty() {
        return 0;
    }
    let mut q: u64 = 0; // quarter tokens
    let mut run = Run::None;
    let mut len: u64 = 0; // length of the current run, in chars
    let mut extra: u64 = 0; // extra quarters accrued inside the current run (case changes)
    let mut prev_lower = false;
    let mut uppers: u32 = 0; // capitals in a row inside the current letter run

    for ch in text.chars() {
        let c = ch as u32;
        let class = if c < 0x80 {
            let b = c as u8;
            if b.is_ascii_alphabetic() {
                Run::Letters
            } else if b.is_ascii_digit() {
                Run::Digits
            } else if b == b' ' || b == b'\t' {
                Run::Blank
            } else if b == b'\n' || b == b'\r' {
                Run::Newline
            } else {
                Run::Punct
            }
        } else if is_cjk(c) {
            // Costed per character, ends any run.
            q += flush(run, len, extra);
            run = Run::None;
            len = 0;
            extra = 0;
            q += Q;
            continue;
        } else if c < 0x800 {
            if is_combining(c) {
                q += 1;
                continue;
            }
            Run::Alpha2
        } else {
            q += flush(run, len, extra);
            run = Run::None;
            len = 0;
            extra = 0;
            q += wide_cost(c);
            continue;
        };

        if class == run {
            len += 1;
            if class == Run::Letters {
                let upper = ch.is_ascii_uppercase();
                if upper && prev_lower {
                    // A new o200k piece starts at every lower→upper change (camelCase, base64).
                    extra += Q;
                } else if upper && uppers >= 1 {
                    // Capitals in a row (acronyms, base64, hashes) merge less than lowercase.
                    extra += 1;
                } else if !upper && uppers >= 2 {
                    // "HTTPResponse", "IHRo": an acronym glued to a word rarely merges.
                    extra += Q / 2;
                }
                uppers = if upper { uppers + 1 } else { 0 };
                prev_lower = !upper;
            }
        } else {
            // A single space glues to the following word or symbol, but not to digits.
            if run == Run::Blank && len == 1 && class == Run::Digits {
                q += Q;
            }
            q += flush(run, len, extra);
            run = class;
            len = 1;
            extra = 0;
            prev_lower = ch.is_ascii_lowercase();
            uppers = u32::from(ch.is_ascii_uppercase());
        }
    }
    q += flush(run, len, extra);

    let tokens = q.div_ceil(Q);
    (tokens + tokens / 6 + 1) as usize
}

/// Quarter-token cost of a finished run.
#[inline]
fn flush(run: Run, len: u64, extra: u64) -> u64 {
    match run {
        Run::None => 0,
        Run::Letters => Q * len.div_ceil(6) + extra,
        Run::Digits => Q * len.div_ceil(3),
        // One space is absorbed by the next word; longer runs are about one token.
        Run::Blank => {
            if len <= 1 {
                0
            } else {
                Q + Q * (len / 16)
            }
        }
        Run::Newline => Q + Q * (len / 8),
        Run::Punct => Q * len.div_ceil(3) + Q * len / 6,
        Run::Alpha2 => 2 * len,
    }
}

/// Han, Kana, Hangul, CJK punctuation and full-width forms.
#[inline]
fn is_cjk(c: u32) -> bool {
    matches!(c,
        0x1100..=0x11FF      // Hangul Jamo
        | 0x2E80..=0x2FDF    // CJK radicals
        | 0x3000..=0x303F    // CJK symbols and punctuation
        | 0x3040..=0x30FF    // Hiragana, Katakana
        | 0x3130..=0x318F    // Hangul compatibility Jamo
        | 0x31F0..=0x31FF    // Katakana extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF00..=0xFFEF    // Half-width and full-width forms
        | 0x20000..=0x3FFFF  // CJK extensions B..
    )
}

/// Combining diacritical marks (they usually merge with the previous letter's token).
#[inline]
fn is_combining(c: u32) -> bool {
    (0x0300..=0x036F).contains(&c)
}

/// Quarter-token cost of a non-CJK character of three or four UTF-8 bytes.
#[inline]
fn wide_cost(c: u32) -> u64 {
    match c {
        // Zero-width joiner, variation selectors: part of an emoji sequence.
        0x200B..=0x200F | 0xFE00..=0xFE0F => Q,
        // Emoji skin-tone modifiers.
        0x1F3FB..=0x1F3FF => Q,
        // Other 4-byte characters: emoji, symbols, historic scripts.
        0x10000.. => 2 * Q,
        // 3-byte scripts (Indic, Thai, symbols, general punctuation...).
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_zero() {
        assert_eq!(estimate(""), 0);
    }

    #[test]
    fn never_zero_for_non_empty() {
        for s in [" ", "a", "\n", "!", "é", "字", "👍", "\u{0301}"] {
            assert!(estimate(s) >= 1, "{s:?}");
        }
    }

    #[test]
    fn cjk_at_least_one_per_char() {
        let s = "今天天气很好我们一起去公园散步吧";
        assert!(estimate(s) >= s.chars().count());
        let k = "안녕하세요오늘날씨가";
        assert!(estimate(k) >= k.chars().count());
    }

    #[test]
    fn scales_linearly_on_huge_text() {
        let unit = "The quick brown fox jumps over the lazy dog. ";
        let one = estimate(unit);
        let many = estimate(&unit.repeat(10_000));
        assert!(many >= one * 10_000 / 2, "{one} {many}");
        assert!(many <= one * 10_000, "{one} {many}");
        // Pathological single runs stay linear and finite.
        assert!(estimate(&"a".repeat(1 << 20)) >= (1 << 20) / 8);
        assert!(estimate(&" ".repeat(1 << 20)) >= 1);
    }

    #[test]
    fn numbers_cost_one_per_three_digits() {
        // 12 digits = 4 tokens, raised by the safety margin.
        let e = estimate("123456789012");
        assert!((4..=6).contains(&e), "{e}");
    }
}
