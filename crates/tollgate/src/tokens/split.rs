//! Splitting a long text into chunks that each fit in a number of tokens.
//!
//! The text is cut where a reader would cut it: between paragraphs (a blank line) first, then at
//! sentence ends and line breaks, then after clause punctuation (`, ; :` followed by a space,
//! `，、；：`), then between words, and only a word longer than a whole chunk is cut inside,
//! between tokens that end on a character boundary (between characters for estimated models).
//! A piece that fits in a chunk is never cut; the pieces are then packed greedily, each chunk
//! taking as many as fit.
//!
//! Every chunk is counted on its own text (token counts do not add up across a cut), and the
//! work stays linear in the text: each piece is counted once, and each chunk is checked with a
//! few counts that stop as soon as the limit is passed, starting from a guess made from the
//! pieces' counts.

use thiserror::Error;

use super::bpe::{count_within, token_ends};
use super::{Encoding, ModelTable, estimate};

/// One chunk of a [`split`] text: a slice of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'t> {
    /// The chunk's text, `&input[start..end]`.
    pub text: &'t str,
    /// Byte offset of the chunk's first byte in the input.
    pub start: usize,
    /// Byte offset just past the chunk's last byte in the input.
    pub end: usize,
    /// Bytes at the start of the chunk repeated from the previous chunk (0 without overlap and
    /// for the first chunk): `&text[overlap..]` is the chunk's new text, and the new texts of all
    /// chunks, in order, are the input.
    pub overlap: usize,
    /// The chunk's token count, counted on its own text: what
    /// [`count_text`](super::count_text) says of `text`. At most the `max_tokens` asked for.
    pub tokens: usize,
    /// True when counted with the model's exact vocabulary; false when the model has none and
    /// the count is an [`estimate()`](super::estimate) (which errs high for modern tokenizers).
    pub exact: bool,
}

/// Why a text cannot be split as asked. Every message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SplitError {
    /// `max_tokens` is 0.
    #[error("max_tokens is 0; give the largest number of tokens a chunk may have (at least 1)")]
    ZeroMax,
    /// `overlap` leaves no room for new text in a chunk.
    #[error(
        "overlap ({overlap}) must be smaller than max_tokens ({max_tokens}); each chunk needs room for new text"
    )]
    OverlapTooLarge {
        /// The overlap asked for.
        overlap: usize,
        /// The chunk size asked for.
        max_tokens: usize,
    },
    /// `max_tokens` is more than the model accepts in one request.
    #[error(
        "max_tokens ({max_tokens}) exceeds the context window of '{model}' ({context_window} tokens); use at most {context_window}, less the tokens of your instructions and the reply"
    )]
    ExceedsContextWindow {
        /// The model.
        model: String,
        /// The chunk size asked for.
        max_tokens: usize,
        /// The model's context window.
        context_window: u64,
    },
    /// The model is not in the table and its name maps to no tokenizer.
    #[error(
        "model '{model}' is not in the model table and has no known tokenizer, so its tokens cannot be counted; check the name, or add the model to the table ([models] in the policy)"
    )]
    UnknownModel {
        /// The model.
        model: String,
    },
    /// The text is empty.
    #[error("the text is empty; there is nothing to split")]
    Empty,
    /// One character alone takes more tokens than a chunk may have.
    #[error(
        "the character at byte {at} alone takes {tokens} tokens, more than max_tokens ({max_tokens}); use a larger max_tokens"
    )]
    CharTooLarge {
        /// Byte offset of the character in the input.
        at: usize,
        /// Its token count.
        tokens: usize,
        /// The chunk size asked for.
        max_tokens: usize,
    },
}

impl SplitError {
    /// A stable code for the error, for bindings and logs: `zero_max`, `overlap_too_large`,
    /// `exceeds_context_window`, `unknown_model`, `empty`, `char_too_large`.
    ///
    /// ```
    /// use tollgate::tokens::SplitError;
    /// assert_eq!(SplitError::Empty.code(), "empty");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            SplitError::ZeroMax => "zero_max",
            SplitError::OverlapTooLarge { .. } => "overlap_too_large",
            SplitError::ExceedsContextWindow { .. } => "exceeds_context_window",
            SplitError::UnknownModel { .. } => "unknown_model",
            SplitError::Empty => "empty",
            SplitError::CharTooLarge { .. } => "char_too_large",
        }
    }
}

/// [`count_text`](super::count_text) for a model the table knows or that is named like an
/// OpenAI model — the models [`split`] accepts; any other is refused
/// ([`SplitError::UnknownModel`]) rather than estimated, since its name is most likely a typo.
///
/// ```
/// use tollgate::tokens::{count_known, ModelTable};
/// let table = ModelTable::bundled();
/// assert_eq!(count_known(table, "gpt-4o", "hello world").unwrap().tokens, 2);
/// assert!(!count_known(table, "qwen-max", "hello world").unwrap().exact); // known, estimated
/// assert_eq!(count_known(table, "gtp-4o", "hi").unwrap_err().code(), "unknown_model");
/// ```
pub fn count_known(
    table: &ModelTable,
    model: &str,
    text: &str,
) -> Result<super::TokenCount, SplitError> {
    if table.encoding(model).is_none() && table.lookup(model).is_none() {
        return Err(SplitError::UnknownModel {
            model: model.to_owned(),
        });
    }
    Ok(super::count_text(table, model, text))
}

/// Splits `text` into chunks of at most `max_tokens` tokens of `model`, each chunk after the
/// first starting with up to `overlap` tokens of the end of the one before.
///
/// Cuts fall between paragraphs, then at sentence ends and line breaks, then after clause
/// punctuation, then between words (see the module docs); a piece that fits in a chunk is
/// never cut, and chunks are packed greedily, as large as `max_tokens` allows. A cut between
/// words leaves the space with the next word (`"…end of one" | " next…"`), where the tokenizer
/// puts it; a line break stays with the line it ends. Each chunk's count is that of its own
/// text.
///
/// With `overlap == 0` the chunks' texts, concatenated, are `text` byte for byte. With an
/// overlap, a chunk begins with the longest tail of the previous chunk that starts at a word
/// boundary (at a character boundary when the last word alone is too long) and counts at most
/// `overlap` tokens, shortened when it would not leave room for the chunk's first new piece;
/// [`Chunk::overlap`] says how many bytes were repeated, and the overlap counts in the chunk's
/// `max_tokens`.
///
/// Models with an exact vocabulary (OpenAI's) are counted exactly. A model of the table without
/// one (Qwen, DeepSeek, Claude, ...) is split by the [`estimate()`](super::estimate), the same
/// count the engine reserves for it, and its chunks say `exact: false`. A model that is neither
/// in the table nor named like an OpenAI model is refused ([`SplitError::UnknownModel`]): its
/// name is most likely a typo. When the table knows the model's context window, `max_tokens`
/// may not exceed it; a model without a known window is not checked.
///
/// Time and memory are linear in the text.
///
/// ```
/// use tollgate::tokens::{split, ModelTable};
/// let text = "First paragraph, short.\n\nSecond paragraph. It has two sentences.";
/// let chunks = split(ModelTable::bundled(), "gpt-4o", text, 12, 0).unwrap();
/// let texts: Vec<&str> = chunks.iter().map(|c| c.text).collect();
/// assert_eq!(texts, ["First paragraph, short.\n\n", "Second paragraph. It has two sentences."]);
/// assert!(chunks.iter().all(|c| c.tokens <= 12 && c.exact));
/// assert_eq!(texts.concat(), text);
/// ```
pub fn split<'t>(
    table: &ModelTable,
    model: &str,
    text: &'t str,
    max_tokens: usize,
    overlap: usize,
) -> Result<Vec<Chunk<'t>>, SplitError> {
    if max_tokens == 0 {
        return Err(SplitError::ZeroMax);
    }
    if overlap >= max_tokens {
        return Err(SplitError::OverlapTooLarge {
            overlap,
            max_tokens,
        });
    }
    let encoding = table.encoding(model);
    let info = table.lookup(model);
    if encoding.is_none() && info.is_none() {
        return Err(SplitError::UnknownModel {
            model: model.to_owned(),
        });
    }
    if let Some(window) = info.and_then(|i| i.context_window)
        && max_tokens as u64 > window
    {
        return Err(SplitError::ExceedsContextWindow {
            model: model.to_owned(),
            max_tokens,
            context_window: window,
        });
    }
    if text.is_empty() {
        return Err(SplitError::Empty);
    }
    let splitter = Splitter {
        text,
        encoding,
        max: max_tokens,
    };
    let cuts = cuts(text);
    let mut pieces = Vec::new();
    match splitter.within(text, max_tokens) {
        Some(n) => pieces.push(Piece {
            start: 0,
            end: text.len(),
            tokens: n,
        }),
        None => splitter.pieces(0, text.len(), &cuts, Level::Paragraph as u8, &mut pieces)?,
    }
    Ok(splitter.pack(&pieces, &cuts, overlap))
}

/// How strong a cut is: a cut at one level is preferred to every cut at a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Word = 1,
    Clause = 2,
    Sentence = 3,
    Paragraph = 4,
}

/// A place the text may be cut: the next piece starts at byte `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    pos: usize,
    level: Level,
}

/// A span of the text that fits in a chunk, with its own count.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
    tokens: usize,
}

/// Closing quotes and brackets: they belong to the sentence they close.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | ')'
            | ']'
            | '}'
            | '»'
            | '’'
            | '”'
            | '」'
            | '』'
            | '）'
            | '】'
            | '》'
            | '〉'
            | '〕'
            | '］'
    )
}

/// The level of a cut at the whitespace after `c`: a sentence end after `.`, a clause after `,`.
fn mark_of(c: char) -> Level {
    match c {
        '.' | '!' | '?' => Level::Sentence,
        ',' | ';' | ':' => Level::Clause,
        _ => Level::Word,
    }
}

/// Punctuation that ends a sentence or a clause without a space after it (CJK, and `…`).
fn unspaced_mark(c: char) -> Option<Level> {
    match c {
        '。' | '！' | '？' | '｡' | '．' | '…' => Some(Level::Sentence),
        '，' | '、' | '；' | '：' | '､' => Some(Level::Clause),
        _ => None,
    }
}

/// Every place `text` may be cut, in order, with its level. One pass over the characters.
fn cuts(text: &str) -> Vec<Cut> {
    let mut out = Vec::new();
    // The level a run of whitespace here would cut at, from the content before it.
    let mut mark = Level::Word;
    // A CJK mark waiting for the next content character (after any closers).
    let mut pending: Option<Level> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((pos, c)) = chars.next() {
        if c.is_whitespace() {
            let mut newlines = 0;
            let mut after_newline = pos;
            let mut last_start = pos;
            let mut end = pos + c.len_utf8();
            let mut note = |p: usize, ch: char| {
                if ch == '\n' {
                    newlines += 1;
                    after_newline = p + 1;
                }
                last_start = p;
            };
            note(pos, c);
            while let Some(&(p, ch)) = chars.peek() {
                if !ch.is_whitespace() {
                    break;
                }
                note(p, ch);
                end = p + ch.len_utf8();
                chars.next();
            }
            // Leading and trailing whitespace is not a cut: no piece of blanks alone.
            if pos > 0 && end < text.len() {
                let cut = match newlines {
                    0 => Cut {
                        pos: last_start,
                        level: mark,
                    },
                    1 => Cut {
                        pos: after_newline,
                        level: Level::Sentence.max(mark),
                    },
                    _ => Cut {
                        pos: after_newline,
                        level: Level::Paragraph,
                    },
                };
                out.push(cut);
            }
            mark = Level::Word;
            pending = None;
        } else if let Some(level) = unspaced_mark(c) {
            pending = Some(pending.map_or(level, |p| p.max(level)));
            mark = level;
        } else if is_closer(c) {
            // Keeps `mark` and `pending`: `."` ends a sentence like `.` does.
        } else {
            if let Some(level) = pending.take() {
                out.push(Cut { pos, level });
            }
            mark = mark_of(c);
        }
    }
    out
}

/// The state of one [`split`] call.
struct Splitter<'t> {
    text: &'t str,
    encoding: Option<Encoding>,
    max: usize,
}

impl<'t> Splitter<'t> {
    /// The count of `s` when it is at most `limit`, else `None`.
    fn within(&self, s: &str, limit: usize) -> Option<usize> {
        match self.encoding {
            Some(e) => count_within(e, s, limit),
            None => Some(estimate(s)).filter(|&n| n <= limit),
        }
    }

    /// The count of `text[start..end]` when it fits in a chunk.
    fn fits(&self, start: usize, end: usize) -> Option<usize> {
        self.within(&self.text[start..end], self.max)
    }

    /// Cuts `start..end` (which does not fit) into pieces that fit, at the strongest cuts
    /// available: those of `level`, else weaker ones. `cuts` are the cuts strictly inside.
    fn pieces(
        &self,
        start: usize,
        end: usize,
        cuts: &[Cut],
        level: u8,
        out: &mut Vec<Piece>,
    ) -> Result<(), SplitError> {
        if level == 0 {
            return self.inside_word(start, end, out);
        }
        if !cuts.iter().any(|c| c.level as u8 >= level) {
            // Nothing to cut at this level: the same span, one level down, not counted again.
            return self.pieces(start, end, cuts, level - 1, out);
        }
        let mut unit_start = start;
        let mut first = 0;
        let ends = cuts
            .iter()
            .enumerate()
            .filter(|(_, c)| c.level as u8 >= level)
            .map(|(i, c)| (i, c.pos))
            .chain(std::iter::once((cuts.len(), end)));
        for (i, unit_end) in ends {
            match self.fits(unit_start, unit_end) {
                Some(tokens) => out.push(Piece {
                    start: unit_start,
                    end: unit_end,
                    tokens,
                }),
                None => self.pieces(unit_start, unit_end, &cuts[first..i], level - 1, out)?,
            }
            unit_start = unit_end;
            first = i + 1;
        }
        Ok(())
    }

    /// Cuts a word too long for a chunk between tokens that end on a character boundary (between
    /// characters for an estimated model, or where such a group of tokens alone is too long).
    fn inside_word(
        &self,
        start: usize,
        end: usize,
        out: &mut Vec<Piece>,
    ) -> Result<(), SplitError> {
        let word = &self.text[start..end];
        let ends: Vec<usize> = match self.encoding {
            Some(e) => token_ends(e, word)
                .into_iter()
                .filter(|&i| word.is_char_boundary(i))
                .collect(),
            None => word.char_indices().map(|(i, c)| i + c.len_utf8()).collect(),
        };
        let mut from = start;
        for to in ends.into_iter().map(|i| start + i) {
            match self.fits(from, to) {
                Some(tokens) => out.push(Piece {
                    start: from,
                    end: to,
                    tokens,
                }),
                None => {
                    // Several characters in a group of tokens: one piece per character.
                    for (i, c) in self.text[from..to].char_indices() {
                        let (a, b) = (from + i, from + i + c.len_utf8());
                        let tokens = self.fits(a, b).ok_or_else(|| SplitError::CharTooLarge {
                            at: a,
                            tokens: self.within(&self.text[a..b], usize::MAX).unwrap_or(0),
                            max_tokens: self.max,
                        })?;
                        out.push(Piece {
                            start: a,
                            end: b,
                            tokens,
                        });
                    }
                }
            }
            from = to;
        }
        Ok(())
    }

    /// Packs `pieces` (which cover the text, in order) greedily into chunks.
    fn pack(&self, pieces: &[Piece], cuts: &[Cut], overlap: usize) -> Vec<Chunk<'t>> {
        let mut chunks: Vec<Chunk<'t>> = Vec::new();
        // Observed tokens per token of the pieces' summed counts, from the last chunk: the
        // guess for the next chunk's end is scaled by it (an estimate's sum errs high).
        let (mut seen, mut summed) = (1usize, 1usize);
        let mut i = 0;
        while i < pieces.len() {
            let fresh = pieces[i].start;
            let (start, first) = match chunks.last() {
                Some(prev) if overlap > 0 => self.overlap_start(prev, &pieces[i], cuts, overlap),
                _ => (fresh, pieces[i].tokens),
            };
            // The guess: as many pieces as the scaled sum of their counts allows.
            let mut sum = first;
            let mut guess = i + 1;
            while guess < pieces.len() {
                let next = sum + pieces[guess].tokens;
                if next.saturating_mul(seen) / summed > self.max {
                    break;
                }
                sum = next;
                guess += 1;
            }
            let (j, tokens) = gallop(i + 1, first, pieces.len() + 1, guess, |k| {
                self.fits(start, pieces[k - 1].end)
            });
            let sum_j = first + pieces[i + 1..j].iter().map(|p| p.tokens).sum::<usize>();
            (seen, summed) = (tokens.max(1), sum_j.max(1));
            let end = pieces[j - 1].end;
            chunks.push(Chunk {
                text: &self.text[start..end],
                start,
                end,
                overlap: fresh - start,
                tokens,
                exact: self.encoding.is_some(),
            });
            i = j;
        }
        chunks
    }

    /// Where the chunk after `prev` starts, and the count from there to the end of its first new
    /// piece `next`: the longest tail of `prev` at a word boundary (else a character boundary)
    /// of at most `overlap` tokens that leaves room for `next`.
    fn overlap_start(
        &self,
        prev: &Chunk<'_>,
        next: &Piece,
        cuts: &[Cut],
        overlap: usize,
    ) -> (usize, usize) {
        let (ps, pe) = (prev.start, prev.end);
        let from = cuts.partition_point(|c| c.pos <= ps);
        let to = cuts.partition_point(|c| c.pos < pe);
        let mut starts: Vec<usize> = cuts[from..to].iter().map(|c| c.pos).collect();
        let last = starts.last().copied().unwrap_or(ps);
        starts.extend(
            self.text[last..pe]
                .char_indices()
                .skip(1)
                .map(|(i, _)| last + i),
        );
        // Tail r (r = 0: no tail) starts at starts[m - r]; longer with r.
        let m = starts.len();
        let at = |r: usize| if r == 0 { pe } else { starts[m - r] };
        let target = pe - ((pe - ps) * overlap / prev.tokens.max(1)).min(pe - ps);
        let guess = m - starts.partition_point(|&s| s < target);
        let (r, _) = gallop(0, 0, m + 1, guess, |r| {
            self.within(&self.text[at(r)..pe], overlap)
        });
        if r == 0 {
            return (pe, next.tokens);
        }
        if let Some(n) = self.fits(at(r), next.end) {
            return (at(r), n);
        }
        // The tail leaves no room for the next piece: a shorter one.
        let (r, n) = gallop(0, next.tokens, r, r - 1, |r| self.fits(at(r), next.end));
        (at(r), n)
    }
}

/// The largest `k` in `lo..hi` for which `probe(k)` is `Some`, and its value, when `probe` is
/// `Some` up to some `k` and `None` after, and `probe(lo)` is `lo_val`. Probes `guess` first,
/// then gallops from it (1, 2, 4, ... away) and bisects: a guess off by `d` costs about
/// `2 log2 d` probes, a right one two.
fn gallop(
    lo: usize,
    lo_val: usize,
    hi: usize,
    guess: usize,
    mut probe: impl FnMut(usize) -> Option<usize>,
) -> (usize, usize) {
    let (mut lo, mut val, mut hi) = (lo, lo_val, hi);
    let guess = guess.min(hi - 1);
    let mut up = true;
    if guess > lo {
        match probe(guess) {
            Some(v) => (lo, val) = (guess, v),
            None => (hi, up) = (guess, false),
        }
    }
    let mut step = 1;
    while hi - lo > 1 {
        let k = if up {
            (lo + step).min(hi - 1)
        } else {
            hi.saturating_sub(step).max(lo + 1)
        };
        match probe(k) {
            Some(v) => {
                (lo, val) = (k, v);
                if !up {
                    break;
                }
            }
            None => {
                hi = k;
                if up {
                    break;
                }
            }
        }
        step *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match probe(mid) {
            Some(v) => (lo, val) = (mid, v),
            None => hi = mid,
        }
    }
    (lo, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::count_text;

    fn texts<'t>(chunks: &[Chunk<'t>]) -> Vec<&'t str> {
        chunks.iter().map(|c| c.text).collect()
    }

    #[test]
    fn cut_levels() {
        let text = "One two. Three, four\nfive\n\n six。七，八";
        let got: Vec<(&str, Level)> = cuts(text)
            .iter()
            .map(|c| (&text[c.pos..], c.level))
            .collect();
        let want = [
            (" two. Three, four\nfive\n\n six。七，八", Level::Word),
            (" Three, four\nfive\n\n six。七，八", Level::Sentence),
            (" four\nfive\n\n six。七，八", Level::Clause),
            ("five\n\n six。七，八", Level::Sentence),
            (" six。七，八", Level::Paragraph),
            ("七，八", Level::Sentence),
            ("八", Level::Clause),
        ];
        assert_eq!(got, want);
        // Closing quotes stay with their sentence; "3.14" is no sentence end.
        let q = "He said \"go.\" Then 3.14 x";
        let levels: Vec<(usize, Level)> = cuts(q).iter().map(|c| (c.pos, c.level)).collect();
        assert_eq!(levels[2], (13, Level::Sentence));
        assert_eq!(levels[3], (18, Level::Word));
        // Leading and trailing blanks are no cut.
        assert!(cuts("  a  ").is_empty());
    }

    #[test]
    fn gallop_finds_the_last_fitting_index() {
        for limit in 0..20usize {
            for guess in 0..25 {
                let mut probes = 0;
                let (k, v) = gallop(0, 100, 20, guess, |k| {
                    probes += 1;
                    (k <= limit).then_some(k * 10)
                });
                let want = limit.min(19);
                assert_eq!((k, v), (want, if want == 0 { 100 } else { want * 10 }));
                if guess == want && want < 19 {
                    assert!(probes <= 2, "{limit} {guess} {probes}");
                }
            }
        }
    }

    #[test]
    fn bad_input_is_refused_with_what_to_do() {
        let t = ModelTable::bundled();
        assert_eq!(split(t, "gpt-4o", "hi", 0, 0), Err(SplitError::ZeroMax));
        assert_eq!(
            split(t, "gpt-4o", "hi", 10, 10),
            Err(SplitError::OverlapTooLarge {
                overlap: 10,
                max_tokens: 10
            })
        );
        let window = t.context_window("gpt-4o").expect("bundled") as usize;
        assert!(split(t, "gpt-4o", "hi", window, 0).is_ok());
        let err = split(t, "gpt-4o", "hi", window + 1, 0).unwrap_err();
        assert!(matches!(err, SplitError::ExceedsContextWindow { .. }));
        assert!(err.to_string().contains("use at most 128000"), "{err}");
        assert_eq!(split(t, "gpt-4o", "", 10, 0), Err(SplitError::Empty));
        let err = split(t, "gtp-4o", "hi", 10, 0).unwrap_err();
        assert_eq!(
            err,
            SplitError::UnknownModel {
                model: "gtp-4o".into()
            }
        );
        assert!(err.to_string().contains("check the name"));
        // A name that maps to a tokenizer but is not in the table: exact, window unchecked.
        let c = split(t, "gpt-4o-2099-01-01-custom", "hi", 1 << 40, 0).unwrap();
        assert!(c[0].exact);
        // One character larger than a chunk: an estimate is at least 2 tokens.
        let err = split(t, "qwen-max", "字", 1, 0).unwrap_err();
        assert_eq!(
            err,
            SplitError::CharTooLarge {
                at: 0,
                tokens: 2,
                max_tokens: 1
            }
        );
        assert!(err.to_string().contains("use a larger max_tokens"));
    }

    #[test]
    fn paragraphs_that_fit_are_never_cut() {
        let t = ModelTable::bundled();
        let para = "A short paragraph with a few words. And a second sentence.\n\n";
        let text = para.repeat(30);
        let one = count_text(t, "gpt-4o", para).tokens as usize;
        let chunks = split(t, "gpt-4o", &text, one * 3 + 2, 0).unwrap();
        assert_eq!(texts(&chunks).concat(), text);
        for c in &chunks {
            assert!(c.text.ends_with("\n\n") && c.text.starts_with('A'), "{c:?}");
            assert_eq!(c.tokens as u64, count_text(t, "gpt-4o", c.text).tokens);
        }
        assert_eq!(chunks.len(), 10);
    }

    #[test]
    fn long_words_are_cut_between_tokens_and_chars() {
        let t = ModelTable::bundled();
        let text = "a".repeat(100);
        let chunks = split(t, "gpt-4o", &text, 3, 0).unwrap();
        assert_eq!(texts(&chunks).concat(), text);
        assert!(chunks.iter().all(|c| c.tokens <= 3));
        assert_eq!(chunks[0].text.len(), 24, "three 8-letter tokens");
        let han = "今天天气很好我们一起去公园散步吧".repeat(10);
        for model in ["gpt-4", "gpt-4o", "qwen-max"] {
            let chunks = split(t, model, &han, 5, 0).unwrap();
            assert_eq!(texts(&chunks).concat(), han, "{model}");
            for c in &chunks {
                assert!(c.tokens <= 5);
                assert_eq!(c.tokens as u64, count_text(t, model, c.text).tokens);
            }
        }
    }

    #[test]
    fn estimated_models_say_so() {
        let t = ModelTable::bundled();
        let text = "Hello there. ".repeat(200);
        let chunks = split(t, "qwen-max", &text, 50, 5).unwrap();
        assert!(chunks.len() > 1);
        for c in &chunks {
            assert!(!c.exact && c.tokens <= 50);
            assert_eq!(c.tokens as u64, count_text(t, "qwen-max", c.text).tokens);
        }
    }

    #[test]
    fn overlap_repeats_the_end_of_the_previous_chunk() {
        let t = ModelTable::bundled();
        let text = "word ".repeat(300) + "end";
        let chunks = split(t, "gpt-4o", &text, 40, 10).unwrap();
        let fresh: String = chunks.iter().map(|c| &c.text[c.overlap..]).collect();
        assert_eq!(fresh, text);
        for w in chunks.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            assert_eq!(b.start + b.overlap, a.end);
            let repeated = &b.text[..b.overlap];
            assert!(a.text.ends_with(repeated));
            let n = count_text(t, "gpt-4o", repeated).tokens;
            assert!((8..=10).contains(&n), "{n} {repeated:?}");
            assert!(b.tokens <= 40);
        }
    }
}
