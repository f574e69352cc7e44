//! `splitText`: a long text cut into chunks of at most a number of tokens
//! ([`tollgate::tokens::split`]), with offsets JavaScript can slice by; `countTokens` and
//! `countRequest`. The module functions use the bundled model table, the engine's methods the
//! running policy's (the bundled table with the policy's `[models]`).

use napi_derive::napi;
use tollgate::tokens::{self, ModelTable};

use crate::engine::NativeEngine;
use crate::error::ErrorInfo;

/// A token count, as JavaScript sees it.
#[napi(object, object_from_js = false)]
#[derive(Debug, Clone, Copy)]
pub struct TokenCountJs {
    /// The tokens.
    pub tokens: f64,
    /// True when counted with the model's vocabulary, false for an estimate.
    pub exact: bool,
}

/// [`tokens::count_known`] with `table`: a model the table does not know at all is refused
/// (`unknown_model`), as [`tokens::split`] refuses it.
fn count_with(table: &ModelTable, model: &str, text: &str) -> Result<TokenCountJs, Box<ErrorInfo>> {
    let c = tokens::count_known(table, model, text).map_err(|e| split_error(&e))?;
    Ok(TokenCountJs {
        tokens: c.tokens as f64,
        exact: c.exact,
    })
}

/// The error of a refused split or count: `invalid_argument` with the split's code.
fn split_error(e: &tokens::SplitError) -> Box<ErrorInfo> {
    Box::new(ErrorInfo {
        code: e.code().to_owned(),
        ..ErrorInfo::invalid_argument(e.to_string())
    })
}

/// The tokens of `text` for `model` (bundled model table).
#[napi(js_name = "countTokens")]
pub fn count_tokens(model: String, text: String) -> napi::Result<TokenCountJs> {
    count_with(ModelTable::bundled(), &model, &text).map_err(|e| e.into_napi())
}

#[napi]
impl NativeEngine {
    /// The tokens of `text` for `model` with the running policy's model table.
    #[napi]
    pub fn count_tokens(&self, model: String, text: String) -> napi::Result<TokenCountJs> {
        self.engine
            .with_model_table(|t| count_with(t, &model, &text))
            .map_err(|e| e.into_napi())
    }

    /// The prompt tokens of a chat request (its JSON text) as admission counts them.
    #[napi]
    pub fn count_request(&self, request: String) -> napi::Result<TokenCountJs> {
        let body: serde_json::Value = serde_json::from_str(&request).map_err(|e| {
            ErrorInfo::new(
                "invalid_request",
                format!("the request body is not JSON: {e}"),
            )
        })?;
        let model = body
            .get("model")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                ErrorInfo::new("invalid_request", "the request has no \"model\" string")
            })?;
        let p = self
            .engine
            .with_model_table(|t| tokens::count_chat(t, model, &body))
            .map_err(|e| {
                ErrorInfo::new("invalid_request", format!("cannot count the request: {e}"))
            })?;
        Ok(TokenCountJs {
            tokens: p.prompt_tokens as f64,
            exact: p.exact,
        })
    }

    /// `splitText` with the running policy's model table.
    #[napi]
    pub fn split_text(
        &self,
        model: String,
        text: String,
        max_tokens: f64,
        overlap: f64,
    ) -> napi::Result<Vec<ChunkJs>> {
        self.engine
            .with_model_table(|t| split_with(t, &model, &text, max_tokens, overlap))
            .map_err(|e| e.into_napi())
    }
}

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
    split_with(ModelTable::bundled(), &model, &text, max_tokens, overlap).map_err(|e| e.into_napi())
}

/// [`tokens::split`] with `table`, offsets in UTF-16 units.
fn split_with(
    table: &ModelTable,
    model: &str,
    text: &str,
    max_tokens: f64,
    overlap: f64,
) -> Result<Vec<ChunkJs>, Box<ErrorInfo>> {
    let chunks = tokens::split(table, model, text, max_tokens as usize, overlap as usize)
        .map_err(|e| split_error(&e))?;
    // Byte offsets to UTF-16 offsets: starts and ends each increase, so one cursor each walks
    // the text once.
    let mut starts = Utf16Cursor::new(text);
    let mut fresh = Utf16Cursor::new(text);
    let mut ends = Utf16Cursor::new(text);
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
