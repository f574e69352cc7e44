//! `splitText`: a long text cut into chunks of at most a number of tokens
//! ([`tollgate::tokens::split`]), with offsets JavaScript can slice by.

use napi_derive::napi;
use tollgate::tokens::{self, ModelTable};

use crate::error::ErrorInfo;

/// One chunk, as JavaScript sees it. Offsets count UTF-16 code units, as `String.prototype.slice`
/// does: `text.slice(start, end)` is the chunk.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone)]
pub struct ChunkJs {
    /// The chunk's text.
    pub text: String,
    /// Its token count (counted on its own text), at most `maxTokens`.
    pub tokens: f64,
    /// True when counted with the model's exact vocabulary, false for an estimate.
    pub exact: bool,
    /// UTF-16 offset of the chunk's start in the input.
    pub start: f64,
    /// UTF-16 offset just past the chunk's end in the input.
    pub end: f64,
    /// UTF-16 code units at the chunk's start repeated from the previous chunk.
    pub overlap: f64,
}

/// Splits `text` into chunks of at most `max_tokens` tokens of `model` (bundled model table),
/// each after the first starting with up to `overlap` tokens of the one before. `index.js`
/// checks that the numbers are non-negative integers. A bad input throws an `invalid_argument`
/// error whose code is [`tokens::SplitError::code`].
///
/// napi-rs converts the JavaScript string to UTF-8 with each lone surrogate replaced by U+FFFD:
/// one UTF-16 unit either way, so the offsets still index the caller's string.
#[napi(js_name = "splitText")]
pub fn split_text(
    model: String,
    text: String,
    max_tokens: f64,
    overlap: f64,
) -> napi::Result<Vec<ChunkJs>> {
    let chunks = tokens::split(
        ModelTable::bundled(),
        &model,
        &text,
        max_tokens as usize,
        overlap as usize,
    )
    .map_err(|e| ErrorInfo {
        code: e.code().to_owned(),
        ..ErrorInfo::invalid_argument(e.to_string())
    })?;
    // Byte offsets to UTF-16 offsets: starts and ends each increase, so one cursor each walks
    // the text once.
    let mut starts = Utf16Cursor::new(&text);
    let mut fresh = Utf16Cursor::new(&text);
    let mut ends = Utf16Cursor::new(&text);
    Ok(chunks
        .iter()
        .map(|c| {
            let start = starts.at(c.start);
            ChunkJs {
                text: c.text.to_owned(),
                tokens: c.tokens as f64,
                exact: c.exact,
                start: start as f64,
                end: ends.at(c.end) as f64,
                overlap: (fresh.at(c.start + c.overlap) - start) as f64,
            }
        })
        .collect())
}

/// Converts increasing byte offsets of a text to UTF-16 offsets.
struct Utf16Cursor<'t> {
    text: &'t str,
    byte: usize,
    unit: usize,
}

impl<'t> Utf16Cursor<'t> {
    fn new(text: &'t str) -> Utf16Cursor<'t> {
        Utf16Cursor {
            text,
            byte: 0,
            unit: 0,
        }
    }

    /// The UTF-16 offset of byte offset `byte` (a character boundary, not below the last one).
    fn at(&mut self, byte: usize) -> usize {
        self.unit += self.text[self.byte..byte]
            .chars()
            .map(char::len_utf16)
            .sum::<usize>();
        self.byte = byte;
        self.unit
    }
}
