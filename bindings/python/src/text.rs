//! Token counts and long texts (with a model table: the bundled one, or an engine's running
//! policy's), and what the Python `Conversation` is built on: trimming a history by the count
//! admission makes, and the message store in the policy's Redis.
//!
//! Offsets cross to Python as code point indices (Python's `str` indices), not UTF-8 byte
//! offsets.

use std::sync::Arc;

use pyo3::prelude::*;
use serde::Serialize;
use tollgate::conversation::{Message, MessageStore, RedisMessageStore, TrimError, Turn};
use tollgate::tokens::{self, ModelTable};

use crate::bridge::{Completer, Payload};
use crate::call::interruptible;
use crate::error::ErrorInfo;

/// A chunk as Python receives it: `(text, start, end, overlap, tokens, exact)`, offsets in
/// code points.
pub type ChunkTuple = (String, usize, usize, usize, usize, bool);

/// Code point index of byte offset `to`, counting on from a known `(byte, index)` position
/// at or before it.
fn advance(text: &str, at: &mut (usize, usize), to: usize) -> usize {
    let (byte, index) = *at;
    let index = index + text[byte..to].chars().count();
    *at = (to, index);
    index
}

/// The error of a refused split or count: `invalid_argument` with the split's code.
fn split_error(e: &tokens::SplitError) -> Box<ErrorInfo> {
    Box::new(ErrorInfo {
        code: e.code().to_owned(),
        ..ErrorInfo::invalid_argument(e.to_string())
    })
}

/// [`tokens::split`] with `table`, offsets in code points.
pub fn split(
    table: &ModelTable,
    model: &str,
    text: &str,
    max_tokens: usize,
    overlap: usize,
) -> Result<Vec<ChunkTuple>, Box<ErrorInfo>> {
    let chunks =
        tokens::split(table, model, text, max_tokens, overlap).map_err(|e| split_error(&e))?;
    // Starts and ends only grow from chunk to chunk: two cursors count each byte once.
    let (mut starts, mut ends) = ((0, 0), (0, 0));
    Ok(chunks
        .into_iter()
        .map(|c| {
            let start = advance(text, &mut starts, c.start);
            let end = advance(text, &mut ends, c.end);
            let overlap = c.text[..c.overlap].chars().count();
            (c.text.to_owned(), start, end, overlap, c.tokens, c.exact)
        })
        .collect())
}

/// [`tokens::count_known`] with `table`: `(tokens, exact)`. A model without a vocabulary is
/// estimated (`exact` false); a model the table does not know at all is refused.
pub fn count(table: &ModelTable, model: &str, text: &str) -> Result<(u64, bool), Box<ErrorInfo>> {
    let c = tokens::count_known(table, model, text).map_err(|e| split_error(&e))?;
    Ok((c.tokens, c.exact))
}

/// The prompt tokens of a chat request (`body` is its JSON), as admission counts it:
/// `(prompt_tokens, exact)`.
pub fn count_request(table: &ModelTable, body: &[u8]) -> Result<(u64, bool), Box<ErrorInfo>> {
    let body: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ErrorInfo::new(
            "invalid_request",
            format!("the request body is not JSON: {e}"),
        )
    })?;
    let model = body
        .get("model")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ErrorInfo::new("invalid_request", "the request has no \"model\" string"))?;
    let p = tokens::count_chat(table, model, &body)
        .map_err(|e| ErrorInfo::new("invalid_request", format!("cannot count the request: {e}")))?;
    Ok((p.prompt_tokens, p.exact))
}

/// A trimmed history as Python receives it (JSON).
#[derive(Serialize)]
struct TrimmedJson {
    messages: Vec<serde_json::Value>,
    prompt_tokens: u64,
    kept: usize,
    dropped: usize,
    exact: bool,
}

/// The error of a trim that cannot fit.
fn trim_error(e: &TrimError) -> ErrorInfo {
    match e {
        TrimError::TooLong {
            needed,
            budget,
            window,
            reserved,
        } => ErrorInfo {
            needed: Some(*needed),
            prompt_budget: Some(*budget),
            window: Some(*window),
            reserved: Some(*reserved),
            ..ErrorInfo::new("too_long", e.to_string())
        },
        TrimError::NoRoom { .. } => ErrorInfo {
            code: "no_room".into(),
            ..ErrorInfo::invalid_argument(e.to_string())
        },
        TrimError::Count(_) => ErrorInfo::new("invalid_request", e.to_string()),
    }
}

/// [`tollgate::Engine::trim_conversation`]: the request's messages as JSON (`messages`,
/// `prompt_tokens`, `kept`, `dropped`, `exact`). `history` is `(role, text)` pairs, oldest
/// first.
pub fn trim(
    engine: &tollgate::Engine,
    model: &str,
    system: Option<&str>,
    history: &[(String, String)],
    user: &str,
    window: u64,
    reserved: u64,
) -> Result<String, Box<ErrorInfo>> {
    let turns: Vec<Turn<'_>> = history
        .iter()
        .map(|(role, text)| Turn { role, text })
        .collect();
    let t = engine
        .trim_conversation(
            model,
            system.filter(|s| !s.is_empty()),
            &turns,
            user,
            window,
            reserved,
        )
        .map_err(|e| Box::new(trim_error(&e)))?;
    let json = TrimmedJson {
        messages: t.messages,
        prompt_tokens: t.prompt_tokens,
        kept: t.kept,
        dropped: t.dropped,
        exact: t.exact,
    };
    // Values already parsed and plain numbers: serialising cannot fail.
    Ok(serde_json::to_string(&json).unwrap_or_else(|_| "{}".to_owned()))
}

/// Conversation messages in the policy's Redis (`<key_prefix>:msg:<id>`, each kept for a TTL),
/// shared by every process and host on the same server. Messages cross as JSON in the
/// chatgpt shape (`id`, `role`, `text`, `parentMessageId`, `conversationId`).
#[pyclass(frozen, module = "tollgate._native")]
pub struct MessageStoreNative {
    store: Arc<RedisMessageStore>,
}

impl MessageStoreNative {
    /// A store over `store`.
    pub fn new(store: RedisMessageStore) -> MessageStoreNative {
        MessageStoreNative {
            store: Arc::new(store),
        }
    }
}

fn store_error(e: &impl std::fmt::Display) -> Box<ErrorInfo> {
    Box::new(ErrorInfo::new("message_store", e.to_string()))
}

async fn get(store: Arc<RedisMessageStore>, id: String) -> Result<Payload, Box<ErrorInfo>> {
    let m = store.get(&id).await.map_err(|e| store_error(&e))?;
    let json = m
        .map(|m| serde_json::to_string(&m))
        .transpose()
        .map_err(|e| store_error(&e))?;
    Ok(Payload::Text(json))
}

async fn put(store: Arc<RedisMessageStore>, message: Message) -> Result<Payload, Box<ErrorInfo>> {
    store.put(&message).await.map_err(|e| store_error(&e))?;
    Ok(Payload::Text(None))
}

fn message_of(json: &str) -> Result<Message, Box<ErrorInfo>> {
    serde_json::from_str(json).map_err(|e| {
        Box::new(ErrorInfo::invalid_argument(format!(
            "not a message (id, role, text, conversationId, parentMessageId): {e}"
        )))
    })
}

#[pymethods]
impl MessageStoreNative {
    /// The message with this id as JSON, `None` when there is none (waits with the GIL
    /// released).
    fn get(&self, py: Python<'_>, id: String) -> PyResult<Option<String>> {
        match interruptible(py, get(Arc::clone(&self.store), id))?? {
            Payload::Text(t) => Ok(t),
            _ => unreachable!("get answers text"),
        }
    }

    /// Stores a message (its JSON), waiting with the GIL released.
    fn put(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        let m = message_of(message)?;
        interruptible(py, put(Arc::clone(&self.store), m))??;
        Ok(())
    }

    /// As `get`, as call `id` of `completer`.
    fn get_async(&self, completer: &Completer, id: u64, message_id: String) -> PyResult<()> {
        completer.spawn(id, get(Arc::clone(&self.store), message_id));
        Ok(())
    }

    /// As `put`, as call `id` of `completer`.
    fn put_async(&self, completer: &Completer, id: u64, message: &str) -> PyResult<()> {
        let m = message_of(message)?;
        completer.spawn(id, put(Arc::clone(&self.store), m));
        Ok(())
    }
}

/// `count_tokens(model, text)` with the bundled model table: `(tokens, exact)`.
#[pyfunction]
pub fn count_tokens(model: &str, text: &str) -> PyResult<(u64, bool)> {
    Ok(count(ModelTable::bundled(), model, text)?)
}

/// `split_text(model, text, max_tokens, overlap)` with the bundled model table (GIL released).
#[pyfunction]
pub fn split_text(
    py: Python<'_>,
    model: &str,
    text: &str,
    max_tokens: usize,
    overlap: usize,
) -> PyResult<Vec<ChunkTuple>> {
    Ok(py.detach(|| split(ModelTable::bundled(), model, text, max_tokens, overlap))?)
}
