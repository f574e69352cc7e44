//! Conversations (the `ChatGPTAPI` class of `chatgpt.js`): the history trimmed by the count
//! admission makes ([`NativeEngine::trim_conversation`]), the model's context window
//! ([`NativeEngine::context_window`]) and a message store in the policy's `[redis]`
//! ([`NativeMessageStore`], Keyv-like: `get(id)` / `set(id, message)`).
//!
//! The conversation itself (parent links, calls, storing after success) runs in JavaScript over
//! `send` / `stream`, so a store may be any Keyv-like object the host brings; only what must be
//! exactly tollgate's — the count and the Redis keys — crosses here.

use std::sync::Arc;
use std::time::Duration;

use napi::Env;
use napi::bindgen_prelude::PromiseRaw;
use napi_derive::napi;
use serde_json::Value;
use tollgate::conversation::{Message, MessageStore, RedisMessageStore, TrimError, Turn};

use crate::engine::NativeEngine;
use crate::error::ErrorInfo;

/// Default time a message stays in Redis: 30 days.
const DEFAULT_TTL_MS: f64 = 30.0 * 24.0 * 3600.0 * 1e3;

/// One history message, oldest first.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct TurnJs {
    /// `user` or `assistant` (or `system`).
    pub role: String,
    /// The message's text.
    pub text: String,
}

/// The messages of a request that fits the window, and what was left out.
#[napi(object, object_from_js = false)]
pub struct TrimmedJs {
    /// The request's `messages`: the system message (if any), the kept history, the new user
    /// message.
    pub messages: Vec<Value>,
    /// The prompt count of those messages, as admission counts the request.
    pub prompt_tokens: f64,
    /// History messages kept (the newest ones).
    pub kept: u32,
    /// History messages left out (the oldest ones).
    pub dropped: u32,
    /// Whether the count is exact (the model has a BPE vocabulary) or an estimate.
    pub exact: bool,
}

/// A stored message in the chatgpt package's shape.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct MessageJs {
    /// The message's id.
    pub id: String,
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub text: String,
    /// The message this one follows; absent for the first of a conversation.
    pub parent_message_id: Option<String>,
    /// The conversation's id.
    pub conversation_id: Option<String>,
}

impl From<Message> for MessageJs {
    fn from(m: Message) -> MessageJs {
        MessageJs {
            id: m.id,
            role: m.role,
            text: m.text,
            parent_message_id: m.parent_id,
            conversation_id: Some(m.conversation_id).filter(|c| !c.is_empty()),
        }
    }
}

/// A whole number of tokens from JavaScript, or an `invalid_argument` naming `what`.
fn tokens(value: f64, what: &str) -> napi::Result<u64> {
    if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= 2f64.powi(53) {
        Ok(value as u64)
    } else {
        Err(ErrorInfo::invalid_argument(format!(
            "{what} must be a whole number of tokens (got {value})"
        ))
        .into_napi())
    }
}

/// The error for a conversation that cannot be fitted.
fn trim_error(e: &TrimError) -> ErrorInfo {
    match e {
        TrimError::TooLong {
            needed,
            budget,
            window,
            reserved,
        } => ErrorInfo {
            needed: Some(*needed as f64),
            prompt_budget: Some(*budget as f64),
            window: Some(*window as f64),
            reserved: Some(*reserved as f64),
            ..ErrorInfo::new("too_long", e.to_string())
        },
        TrimError::NoRoom { .. } => ErrorInfo {
            code: "no_room".into(),
            ..ErrorInfo::invalid_argument(e.to_string())
        },
        TrimError::Count(_) => ErrorInfo::new("invalid_request", e.to_string()),
    }
}

#[napi]
impl NativeEngine {
    /// The context window of `model` in the running policy's model table (the bundled table
    /// with the policy's `[models]`), `null` when unknown.
    #[napi]
    pub fn context_window(&self, model: String) -> Option<f64> {
        self.engine.context_window(&model).map(|w| w as f64)
    }

    /// Keeps the system message and the new user message, then the newest history messages
    /// that fit in `window - reserved` prompt tokens, counted as admission counts the request.
    /// Throws `too_long` (with `needed` and the budget) when the system and user messages alone
    /// do not fit, `no_room` when `reserved` leaves no room for a prompt.
    #[napi]
    pub fn trim_conversation(
        &self,
        model: String,
        system: Option<String>,
        history: Vec<TurnJs>,
        user: String,
        window: f64,
        reserved: f64,
    ) -> napi::Result<TrimmedJs> {
        let window = tokens(window, "maxModelTokens")?;
        let reserved = tokens(reserved, "maxResponseTokens")?;
        let turns: Vec<Turn<'_>> = history
            .iter()
            .map(|t| Turn {
                role: &t.role,
                text: &t.text,
            })
            .collect();
        let t = self
            .engine
            .trim_conversation(
                &model,
                system.as_deref().filter(|s| !s.is_empty()),
                &turns,
                &user,
                window,
                reserved,
            )
            .map_err(|e| trim_error(&e).into_napi())?;
        Ok(TrimmedJs {
            messages: t.messages,
            prompt_tokens: t.prompt_tokens as f64,
            kept: u32::try_from(t.kept).unwrap_or(u32::MAX),
            dropped: u32::try_from(t.dropped).unwrap_or(u32::MAX),
            exact: t.exact,
        })
    }

    /// A message store in the policy's `[redis]` (each message kept `ttl_ms`, default 30
    /// days), shared by every process on the same server; `null` when the policy has no
    /// `[redis]`.
    #[napi]
    pub fn redis_message_store(
        &self,
        ttl_ms: Option<f64>,
    ) -> napi::Result<Option<NativeMessageStore>> {
        let ttl = ttl_ms.unwrap_or(DEFAULT_TTL_MS);
        if !(ttl.is_finite() && ttl >= 1.0) {
            return Err(ErrorInfo::invalid_argument(format!(
                "ttlMs must be at least 1 ms (got {ttl})"
            ))
            .into_napi());
        }
        Ok(self
            .engine
            .redis_message_store(Duration::from_secs_f64(ttl / 1e3))
            .map(|store| NativeMessageStore {
                store: Arc::new(store),
            }))
    }
}

/// Conversation messages in the policy's Redis, under `<key_prefix>:msg:<id>` with a TTL.
#[napi]
pub struct NativeMessageStore {
    store: Arc<RedisMessageStore>,
}

/// The error of a store operation.
fn store_error(e: &impl std::fmt::Display) -> napi::Error {
    ErrorInfo::new("message_store", e.to_string()).into_napi()
}

#[napi]
impl NativeMessageStore {
    /// The message with this id, `null` when there is none (or it expired).
    #[napi(ts_return_type = "Promise<MessageJs | null>")]
    pub fn get<'env>(
        &self,
        env: &'env Env,
        id: String,
    ) -> napi::Result<PromiseRaw<'env, Option<MessageJs>>> {
        let store = Arc::clone(&self.store);
        env.spawn_future(async move {
            match store.get(&id).await {
                Ok(m) => Ok(m.map(MessageJs::from)),
                Err(e) => Err(store_error(&e)),
            }
        })
    }

    /// Stores (or replaces) `message` under its id, which must be `id`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn set<'env>(
        &self,
        env: &'env Env,
        id: String,
        message: MessageJs,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        if message.id != id {
            return Err(ErrorInfo::invalid_argument(format!(
                "the message store keeps a message under its own id: set('{id}', ...) was given \
                 message '{}'",
                message.id
            ))
            .into_napi());
        }
        let message = Message {
            id: message.id,
            role: message.role,
            text: message.text,
            parent_id: message.parent_message_id,
            conversation_id: message.conversation_id.unwrap_or_default(),
        };
        let store = Arc::clone(&self.store);
        env.spawn_future(async move { store.put(&message).await.map_err(|e| store_error(&e)) })
    }
}
