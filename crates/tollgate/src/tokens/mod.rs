//! Token accounting: exact and estimated prompt counts, the model table, usage reconciliation
//! and cost.
//!
//! Before a call, [`count_chat`] turns a chat-completions body into a [`PromptEstimate`]
//! (exact BPE counts for OpenAI models via [`count`], a bounded [`estimate()`] for the rest, plus
//! per-message overhead and the completion allowance). After it, [`Usage::from_response`] (or
//! [`Usage::from_streamed`] when a stream brought no usage) gives what was really consumed, and
//! [`cost()`] prices it with the [`ModelTable`]'s [`Price`]. A document too long for one request
//! is cut by [`split`] into chunks that each fit in a number of tokens.
//!
//! ```
//! use serde_json::json;
//! use tollgate::tokens::{self, ModelTable, Usage};
//!
//! let table = ModelTable::bundled();
//! let req = json!({"model": "gpt-4o-mini", "max_tokens": 256,
//!                  "messages": [{"role": "user", "content": "Say hi"}]});
//! let before = tokens::count_chat(table, "", &req).unwrap();
//! let price = table.price("gpt-4o-mini").unwrap();
//! let reserve = tokens::estimate_cost(&price, before.prompt_tokens, before.completion_allowance.unwrap());
//!
//! let resp = json!({"usage": {"prompt_tokens": before.prompt_tokens, "completion_tokens": 3}});
//! let used = Usage::from_response(&resp).unwrap().unwrap();
//! assert!(tokens::cost(&price, &used).total() <= reserve);
//! ```
//!
//! This module is a leaf: it depends on no other module of the crate.

mod bpe;
mod chat;
mod cost;
mod error;
mod estimate;
mod memo;
mod models;
mod split;
mod types;
mod usage;

pub use bpe::{count, warm_up};
pub use chat::{
    IMAGE_TOKENS_DEFAULT, IMAGE_TOKENS_LOW, PromptEstimate, REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE, TOKENS_PER_NAME, TokenCount, count_chat, count_text,
};
pub use cost::{Cost, cost, estimate_cost};
pub use error::TokenError;
pub use estimate::estimate;
pub use models::{ModelInfo, ModelTable, encoding_for_model};
pub use split::{Chunk, SplitError, count_known, split};
pub use types::{Encoding, Price};
pub use usage::Usage;
