//! Token counts and long texts with an engine's model table (the bundled table with the
//! policy's `[prices]` and `[models]`: the counts admission makes), for hosts that count or cut
//! text before they call.

use tollgate::tokens::{self, ModelTable};

use super::engine::tg_engine;
use super::error::{boundary, quietly, value};
use super::{arg, bytes_arg, json_arg, out, put, tg_error, tg_status, tg_str};

/// One piece of a split text. Offsets are byte offsets into the text given: the chunk's text is
/// `text[start..end]`, and its first `overlap` bytes repeat the end of the previous chunk.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct tg_chunk {
    /// Byte offset of the chunk's first byte.
    pub start: usize,
    /// Byte offset just past its last byte.
    pub end: usize,
    /// Bytes at its start repeated from the previous chunk (0 without overlap).
    pub overlap: usize,
    /// Its token count, counted on its own text; at most the `max_tokens` asked for.
    pub tokens: u64,
    /// True when counted with the model's vocabulary; false for an estimate.
    pub exact: bool,
}

/// The chunks of a split text, in order. Read them with `tg_chunks_len` and `tg_chunks_get`;
/// free with `tg_chunks_free`.
pub struct tg_chunks {
    chunks: Vec<tg_chunk>,
}

/// The error of a refused split or count: `TG_STATUS_INVALID_ARGUMENT` with the split's code.
fn split_error(e: &tokens::SplitError) -> Box<tg_error> {
    tg_error::new(tg_status::InvalidArgument, e.to_string()).with_code(e.code())
}

fn count_text(table: &ModelTable, model: &str, text: &str) -> Result<(u64, bool), Box<tg_error>> {
    let c = tokens::count_known(table, model, text).map_err(|e| split_error(&e))?;
    Ok((c.tokens, c.exact))
}

/// Writes a count to its outputs (`out_exact` may be NULL).
///
/// # Safety
/// `out_tokens` checked non-NULL and writable; `out_exact` NULL or writable.
unsafe fn put_count(out_tokens: *mut u64, out_exact: *mut bool, (tokens, exact): (u64, bool)) {
    // SAFETY: per the contract.
    unsafe { put(out_tokens, tokens) };
    if !out_exact.is_null() {
        // SAFETY: non-NULL, writable per the contract.
        unsafe { put(out_exact, exact) };
    }
}

/// The tokens of `text` for `model`: exact for models with a vocabulary (`*out_exact` true),
/// else an estimate. `out_exact` may be NULL.
///
/// Errors: NULL `engine` or `out_tokens`; `model` or `text` not UTF-8; a model the table does
/// not know at all (`TG_STATUS_INVALID_ARGUMENT`, code `unknown_model`).
///
/// # Safety
/// `engine` must be a live engine; `model` and `text` valid `tg_str`s; `out_tokens`,
/// `out_exact` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_count_tokens(
    engine: *const tg_engine,
    model: tg_str,
    text: tg_str,
    out_tokens: *mut u64,
    out_exact: *mut bool,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_tokens = out(out_tokens, "out_tokens")?;
        // SAFETY: valid tg_strs per the contract.
        let (model, text) = unsafe { (model.text("model")?, text.text("text")?) };
        let count = engine
            .engine
            .with_model_table(|t| count_text(t, model, text))?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put_count(out_tokens, out_exact, count) };
        Ok(())
    })
}

/// The prompt tokens of a chat request (its JSON body) as admission counts them, per-message
/// overhead and reply priming included: what the upstream bills as `prompt_tokens`.
/// `out_exact` may be NULL.
///
/// Errors: NULL `engine` or `out_tokens`; a body that is not UTF-8 or not JSON; a request
/// without a `model` string or whose messages cannot be read (`TG_STATUS_INVALID_REQUEST`).
///
/// # Safety
/// `engine` must be a live engine; `request` must point to `len` readable bytes; `out_tokens`,
/// `out_exact` and `err` writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_count_request(
    engine: *const tg_engine,
    request: *const u8,
    len: usize,
    out_tokens: *mut u64,
    out_exact: *mut bool,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_tokens = out(out_tokens, "out_tokens")?;
        // SAFETY: pointer + length from the caller.
        let body = json_arg(unsafe { bytes_arg(request, len, "request")? }, "request")?;
        let model = body
            .get("model")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                tg_error::new(
                    tg_status::InvalidRequest,
                    "the request has no \"model\" string",
                )
            })?;
        let prompt = engine
            .engine
            .with_model_table(|t| tokens::count_chat(t, model, &body))
            .map_err(|e| {
                tg_error::new(
                    tg_status::InvalidRequest,
                    format!("cannot count the request: {e}"),
                )
            })?;
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put_count(out_tokens, out_exact, (prompt.prompt_tokens, prompt.exact)) };
        Ok(())
    })
}

/// The context window of `model` in the engine's model table; 0 when unknown, when `engine` is
/// NULL or `model` is not UTF-8.
///
/// # Safety
/// `engine` must be NULL or a live engine; `model` a valid `tg_str`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_context_window(engine: *const tg_engine, model: tg_str) -> u64 {
    value(0, || {
        // SAFETY: NULL or live; a valid tg_str, per the contract.
        let Some(engine) = (unsafe { engine.as_ref() }) else {
            return 0;
        };
        // SAFETY: a valid tg_str per the contract.
        match unsafe { model.text("model") } {
            Ok(model) => engine.engine.context_window(model).unwrap_or(0),
            Err(_) => 0,
        }
    })
}

/// Cuts `text` into chunks of at most `max_tokens` tokens of `model`: between paragraphs, else
/// sentences and line breaks, else clauses, else words, inside a word only when it alone is too
/// long; greedy, linear in the text; each chunk counted on its own text. With `overlap` > 0 each
/// chunk after the first starts with about that many tokens of the previous one's end. On
/// success `*out_chunks` receives the chunks (free with `tg_chunks_free`); without overlap they
/// give the text back byte for byte.
///
/// Errors (`TG_STATUS_INVALID_ARGUMENT` with a stable code): `zero_max`, `overlap_too_large`,
/// `exceeds_context_window`, `unknown_model`, `empty`, `char_too_large`; NULL `engine` or
/// `out_chunks`; `model` or `text` not UTF-8. Blocks for as long as the text takes (linear;
/// about 15 MB/s).
///
/// # Safety
/// `engine` must be a live engine; `model` and `text` valid `tg_str`s; `out_chunks` and `err`
/// writable when not NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_engine_split_text(
    engine: *const tg_engine,
    model: tg_str,
    text: tg_str,
    max_tokens: usize,
    overlap: usize,
    out_chunks: *mut *mut tg_chunks,
    err: *mut *mut tg_error,
) -> tg_status {
    boundary(err, || {
        // SAFETY: NULL or live, per the contract.
        let engine = unsafe { arg(engine, "engine")? };
        let out_chunks = out(out_chunks, "out_chunks")?;
        // SAFETY: valid tg_strs per the contract.
        let (model, text) = unsafe { (model.text("model")?, text.text("text")?) };
        let chunks = engine
            .engine
            .with_model_table(|t| tokens::split(t, model, text, max_tokens, overlap))
            .map_err(|e| split_error(&e))?;
        let chunks = chunks
            .into_iter()
            .map(|c| tg_chunk {
                start: c.start,
                end: c.end,
                overlap: c.overlap,
                tokens: c.tokens as u64,
                exact: c.exact,
            })
            .collect();
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put(out_chunks, Box::into_raw(Box::new(tg_chunks { chunks }))) };
        Ok(())
    })
}

/// The number of chunks; 0 for NULL.
///
/// # Safety
/// `chunks` must be NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_chunks_len(chunks: *const tg_chunks) -> usize {
    // SAFETY: NULL or live, per the contract.
    value(0, || {
        unsafe { chunks.as_ref() }.map_or(0, |c| c.chunks.len())
    })
}

/// Chunk `index` (0-based), owned by `chunks`; NULL when `chunks` is NULL or `index` is out of
/// range.
///
/// # Safety
/// `chunks` must be NULL or live; the result is valid until `chunks` is freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_chunks_get(chunks: *const tg_chunks, index: usize) -> *const tg_chunk {
    value(std::ptr::null(), || {
        // SAFETY: NULL or live, per the contract.
        unsafe { chunks.as_ref() }
            .and_then(|c| c.chunks.get(index))
            .map_or(std::ptr::null(), std::ptr::from_ref)
    })
}

/// Frees chunks. NULL does nothing.
///
/// # Safety
/// `chunks` must be NULL or from `tg_engine_split_text`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_chunks_free(chunks: *mut tg_chunks) {
    quietly(|| {
        if !chunks.is_null() {
            // SAFETY: from Box::into_raw in tg_engine_split_text, freed once.
            drop(unsafe { Box::from_raw(chunks) });
        }
    });
}
