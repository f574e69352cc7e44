//! Conversations over the call API: messages kept in a store, history rebuilt from parent
//! links and trimmed to the context window by the exact count admission uses.
//!
//! [`Conversation::send`] sends a user message with an optional parent message (and system
//! message) through [`crate::Engine::send`] — so budgets, cache, retries, fallbacks and
//! key pools apply — and returns the assistant's message with its id, parent, conversation,
//! text, usage and settlement. [`Conversation::send_streaming`] does the same over
//! [`crate::Engine::stream`], calling back with the text so far.
//!
//! The history is rebuilt from the [`MessageStore`] by following parent links (at most
//! [`ConversationOptions::max_history`] messages) and [`trim`]med: the system message and the
//! new user message are always kept, then the newest turns that fit in
//! `max_model_tokens - max_response_tokens`; when the system and user messages alone do not
//! fit, the call is refused before anything is sent ([`TrimError::TooLong`], naming both
//! numbers). The user's message and the answer are stored only when the call succeeded.
//!
//! An unknown parent id is refused ([`ConversationError::UnknownParent`]) rather than silently
//! starting a new conversation: a lost history is a bug to surface, not to paper over. A store
//! that fails while the history is read or the messages are written does not fail the call: the
//! answer comes back with the store's error in [`Reply::store_error`].

mod store;
mod trim;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

pub use store::{
    MemoryStore, Message, MessageStore, MessageStoreError, RedisMessageStore, StoreFuture,
};
pub use trim::{TrimError, Trimmed, Turn, trim};

use crate::engine::{CallError, ChatRequest, Engine, Settlement};
use crate::tokens::Usage;

/// Default for [`ConversationOptions::max_response_tokens`].
pub const DEFAULT_MAX_RESPONSE_TOKENS: u64 = 1000;

/// Default for [`ConversationOptions::max_history`].
pub const DEFAULT_MAX_HISTORY: usize = 1000;

/// What every message of a [`Conversation`] is sent with.
#[derive(Debug, Clone)]
pub struct ConversationOptions {
    /// The model asked for.
    pub model: String,
    /// The system message, unless a send gives its own.
    pub system_message: Option<String>,
    /// Other request fields (`temperature`, `top_p`, ...), sent with every message.
    pub completion_params: Map<String, Value>,
    /// The context window; `None`: the model's, from the policy's model table.
    pub max_model_tokens: Option<u64>,
    /// Tokens kept for the answer (also sent as `max_tokens`).
    pub max_response_tokens: u64,
    /// The tenant the calls are made for.
    pub tenant: String,
    /// Most history messages read back through parent links.
    pub max_history: usize,
}

impl ConversationOptions {
    /// Options for `model` with the defaults.
    pub fn new(model: impl Into<String>) -> ConversationOptions {
        ConversationOptions {
            model: model.into(),
            system_message: None,
            completion_params: Map::new(),
            max_model_tokens: None,
            max_response_tokens: DEFAULT_MAX_RESPONSE_TOKENS,
            tenant: String::new(),
            max_history: DEFAULT_MAX_HISTORY,
        }
    }
}

/// What one send may change.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// The message this one follows (the previous answer); `None` starts a conversation.
    pub parent_message_id: Option<String>,
    /// The conversation's id; `None`: the parent's, or a new one.
    pub conversation_id: Option<String>,
    /// The system message for this send (instead of the conversation's).
    pub system_message: Option<String>,
    /// The id of the user's message; `None`: a new UUID.
    pub message_id: Option<String>,
    /// The call's deadline.
    pub deadline: Option<Duration>,
}

/// The answer to a send.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The assistant's message (stored, with the user's message as its parent).
    pub message: Message,
    /// The user's message as stored.
    pub user_message: Message,
    /// Usage the upstream reported.
    pub usage: Option<Usage>,
    /// What the call was charged.
    pub settlement: Option<Settlement>,
    /// The prompt's count (as admission counted it).
    pub prompt_tokens: u64,
    /// History messages sent.
    pub history_kept: usize,
    /// History messages left out to fit the window.
    pub history_dropped: usize,
    /// The answer's finish reason, when it gave one.
    pub finish_reason: Option<String>,
    /// The upstream's whole answer (for a stream, assembled).
    pub detail: Value,
    /// A store that failed (reading the history or writing the messages); the call answered.
    pub store_error: Option<MessageStoreError>,
}

/// The text of a streamed answer so far.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The assistant message's id (the one the reply will carry).
    pub id: &'a str,
    /// What the last event added.
    pub delta: &'a str,
    /// The text so far.
    pub text: &'a str,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConversationError {
    /// The call failed (denied, gave up, deadline, cut stream, ...).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The messages do not fit the window.
    #[error(transparent)]
    Trim(#[from] TrimError),
    /// The parent message is not in the store.
    #[error(
        "parent message {0} is not in the message store (expired, evicted or never stored); \
         send without a parent to start a new conversation"
    )]
    UnknownParent(String),
    /// The model's context window is unknown and no `max_model_tokens` was given.
    #[error("the context window of model '{0}' is not known: set max_model_tokens")]
    UnknownWindow(String),
    /// The message is empty.
    #[error("the message is empty")]
    Empty,
    /// The answer has no text.
    #[error("the answer has no message text: {0}")]
    NoText(String),
}

impl ConversationError {
    /// A stable short name: the call error's code, or `too_long`, `no_room`, `unknown_parent`,
    /// `unknown_window`, `empty`, `no_text`.
    pub fn code(&self) -> &'static str {
        match self {
            ConversationError::Call(e) => e.code(),
            ConversationError::Trim(TrimError::TooLong { .. }) => "too_long",
            ConversationError::Trim(TrimError::NoRoom { .. }) => "no_room",
            ConversationError::Trim(TrimError::Count(_)) => "invalid_request",
            ConversationError::UnknownParent(_) => "unknown_parent",
            ConversationError::UnknownWindow(_) => "unknown_window",
            ConversationError::Empty => "empty",
            ConversationError::NoText(_) => "no_text",
        }
    }
}

/// A conversation API over an engine and a message store.
#[derive(Debug, Clone)]
pub struct Conversation {
    engine: Engine,
    store: Arc<dyn MessageStore>,
    options: ConversationOptions,
}

/// What a request ready to send is made of.
struct Prepared {
    user: Message,
    assistant_id: String,
    trimmed: Trimmed,
    store_error: Option<MessageStoreError>,
}

/// What the call answered, besides the text.
struct Answered {
    usage: Option<Usage>,
    settlement: Option<Settlement>,
    finish_reason: Option<String>,
    detail: Value,
}

/// A new random id in UUID v4 form.
pub fn new_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No system randomness: time and a counter still make ids unique in this process.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b[..8].copy_from_slice(&t.to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Conversation {
    /// Conversations on `engine`, their messages in `store`.
    pub fn new(
        engine: Engine,
        store: Arc<dyn MessageStore>,
        options: ConversationOptions,
    ) -> Conversation {
        Conversation {
            engine,
            store,
            options,
        }
    }

    /// The options every send uses.
    pub fn options(&self) -> &ConversationOptions {
        &self.options
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn MessageStore> {
        &self.store
    }

    /// The history before `parent` (oldest first), read through parent links.
    async fn history(
        &self,
        parent: Option<&str>,
    ) -> Result<(Vec<Message>, Option<MessageStoreError>), ConversationError> {
        let mut out = vec![];
        let Some(first) = parent else {
            return Ok((out, None));
        };
        let mut next = Some(first.to_owned());
        while let Some(id) = next.take() {
            if out.len() >= self.options.max_history {
                break;
            }
            match self.store.get(&id).await {
                Ok(Some(m)) => {
                    next.clone_from(&m.parent_id);
                    out.push(m);
                }
                Ok(None) if out.is_empty() => return Err(ConversationError::UnknownParent(id)),
                // An older message expired: the history starts after it.
                Ok(None) => break,
                Err(e) => {
                    out.reverse();
                    return Ok((out, Some(e)));
                }
            }
        }
        out.reverse();
        Ok((out, None))
    }

    async fn prepare(
        &self,
        text: &str,
        opts: &SendOptions,
        stream: bool,
    ) -> Result<(ChatRequest, Prepared), ConversationError> {
        if text.is_empty() {
            return Err(ConversationError::Empty);
        }
        let o = &self.options;
        let window = match o.max_model_tokens {
            Some(w) => w,
            None => self
                .engine
                .context_window(&o.model)
                .ok_or_else(|| ConversationError::UnknownWindow(o.model.clone()))?,
        };
        let (history, store_error) = self.history(opts.parent_message_id.as_deref()).await?;
        let turns: Vec<Turn<'_>> = history
            .iter()
            .map(|m| Turn {
                role: &m.role,
                text: &m.text,
            })
            .collect();
        let system = opts
            .system_message
            .as_deref()
            .or(o.system_message.as_deref());
        let mut trimmed = self.engine.trim_conversation(
            &o.model,
            system,
            &turns,
            text,
            window,
            o.max_response_tokens,
        )?;
        let conversation_id = opts
            .conversation_id
            .clone()
            .or_else(|| history.last().map(|m| m.conversation_id.clone()))
            .unwrap_or_else(new_id);
        let user = Message {
            id: opts.message_id.clone().unwrap_or_else(new_id),
            role: "user".into(),
            text: text.to_owned(),
            parent_id: opts.parent_message_id.clone(),
            conversation_id,
        };
        let mut body = Map::new();
        body.insert("model".into(), json!(o.model));
        for (k, v) in &o.completion_params {
            body.insert(k.clone(), v.clone());
        }
        // The messages move into the body; the rest of `trimmed` is kept for the reply.
        body.insert(
            "messages".into(),
            Value::Array(std::mem::take(&mut trimmed.messages)),
        );
        body.insert("max_tokens".into(), json!(o.max_response_tokens));
        body.remove("max_completion_tokens");
        if stream {
            body.insert("stream".into(), json!(true));
        } else {
            body.remove("stream");
        }
        let mut request = ChatRequest::new(Value::Object(body)).tenant(&o.tenant);
        if let Some(d) = opts.deadline {
            request = request.deadline(d);
        }
        Ok((
            request,
            Prepared {
                user,
                assistant_id: new_id(),
                trimmed,
                store_error,
            },
        ))
    }

    /// Stores the user's message and the answer; the first error is kept.
    async fn keep(&self, p: &Prepared, answer: &Message) -> Option<MessageStoreError> {
        let a = self.store.put(&p.user).await.err();
        let b = self.store.put(answer).await.err();
        p.store_error.clone().or(a).or(b)
    }

    /// Stores the user's message and the answer `text`, and makes the reply.
    async fn reply(&self, p: Prepared, text: String, answered: Answered) -> Reply {
        let message = Message {
            id: p.assistant_id.clone(),
            role: "assistant".into(),
            text,
            parent_id: Some(p.user.id.clone()),
            conversation_id: p.user.conversation_id.clone(),
        };
        let store_error = self.keep(&p, &message).await;
        Reply {
            message,
            user_message: p.user,
            usage: answered.usage,
            settlement: answered.settlement,
            prompt_tokens: p.trimmed.prompt_tokens,
            history_kept: p.trimmed.kept,
            history_dropped: p.trimmed.dropped,
            finish_reason: answered.finish_reason,
            detail: answered.detail,
            store_error,
        }
    }

    /// Sends `text` and waits for the whole answer.
    pub async fn send(&self, text: &str, opts: SendOptions) -> Result<Reply, ConversationError> {
        let (request, p) = self.prepare(text, &opts, false).await?;
        let response = self.engine.send(request).await?;
        let detail = response.json().unwrap_or(Value::Null);
        let choice = detail.pointer("/choices/0");
        let content = choice
            .and_then(|c| c.pointer("/message/content"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ConversationError::NoText(String::from_utf8_lossy(&response.body).into_owned())
            })?;
        let finish_reason = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let content = content.to_owned();
        let answered = Answered {
            usage: response.usage,
            settlement: response.settlement,
            finish_reason,
            detail,
        };
        Ok(self.reply(p, content, answered).await)
    }

    /// Sends `text` as a stream, calling `on_progress` with the text so far after every event
    /// that adds some. A stream that breaks off is an error and nothing is stored.
    pub async fn send_streaming(
        &self,
        text: &str,
        opts: SendOptions,
        mut on_progress: impl FnMut(&Progress<'_>) + Send,
    ) -> Result<Reply, ConversationError> {
        let (request, p) = self.prepare(text, &opts, true).await?;
        let mut stream = self.engine.stream(request).await?;
        let mut text = String::new();
        let mut finish_reason = None;
        while let Some(event) = stream.next().await {
            let event = event?;
            if event.is_done() {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            let Some(choice) = v.pointer("/choices/0") else {
                continue;
            };
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                finish_reason = Some(r.to_owned());
            }
            if let Some(delta) = choice
                .pointer("/delta/content")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                text.push_str(delta);
                on_progress(&Progress {
                    id: &p.assistant_id,
                    delta,
                    text: &text,
                });
            }
        }
        let usage = stream.usage();
        let detail = json!({
            "id": p.assistant_id,
            "object": "chat.completion",
            "model": self.options.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": usage.map(|u| json!({"prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens})),
        });
        let answered = Answered {
            usage,
            settlement: stream.settlement().copied(),
            finish_reason,
            detail,
        };
        Ok(self.reply(p, text, answered).await)
    }
}

impl Engine {
    /// The context window of `model` in the running policy's model table (the bundled table
    /// with the policy's `[models]`), `None` when unknown.
    pub fn context_window(&self, model: &str) -> Option<u64> {
        self.inner().current().models.context_window(model)
    }

    /// Runs `f` with the running policy's model table: the bundled table with the policy's
    /// `[prices]` and `[models]`, the one admission counts and prices with. For counting or
    /// [`split`](crate::tokens::split)ting text the way calls through this engine are counted.
    ///
    /// ```
    /// let engine = tollgate::Engine::from_text("version = 1\n[models]\nmy-model = { encoding = \"o200k_base\", context_window = 8192 }\n").unwrap();
    /// let count = engine.with_model_table(|t| tollgate::tokens::count_text(t, "my-model", "hello world"));
    /// assert_eq!((count.tokens, count.exact), (2, true));
    /// ```
    pub fn with_model_table<R>(&self, f: impl FnOnce(&crate::tokens::ModelTable) -> R) -> R {
        f(&self.inner().current().models)
    }

    /// [`trim`] with the running policy's model table: the messages of a request that fits
    /// `window - reserved` prompt tokens as admission counts them.
    pub fn trim_conversation(
        &self,
        model: &str,
        system: Option<&str>,
        history: &[Turn<'_>],
        user: &str,
        window: u64,
        reserved: u64,
    ) -> Result<Trimmed, TrimError> {
        let compiled = self.inner().current();
        trim(
            &compiled.models,
            model,
            system,
            history,
            user,
            window,
            reserved,
        )
    }

    /// A [`MessageStore`] in the policy's `[redis]` server, each message kept for `ttl`, so
    /// several processes (and hosts) continue the same conversations. `None` when the policy
    /// has no `[redis]` section.
    pub fn redis_message_store(&self, ttl: Duration) -> Option<RedisMessageStore> {
        self.inner()
            .redis_store()
            .map(|store| RedisMessageStore::new(store, ttl))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_look_like_uuid_v4_and_differ() {
        let a = super::new_id();
        let b = super::new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
