//! The call API's request, answer and error: [`ChatRequest`] in, [`ChatResponse`] or
//! [`CallError`] out.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::auth::AuthError;
use crate::cache::{CacheMode, CachedResponse};
use crate::tokens::Usage;
use crate::transport::TransportError;

use super::deny::Denial;
use super::outcome::{GiveUp, Settlement};
use super::route::{AttemptRecord, TargetRef};

/// One chat-completions request for [`crate::Engine::send`] or [`crate::Engine::stream`]: the OpenAI request
/// body and who makes it.
///
/// ```
/// use serde_json::json;
/// use tollgate::ChatRequest;
/// let req = ChatRequest::new(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
///     .tenant("acme")
///     .deadline(std::time::Duration::from_secs(30));
/// assert_eq!(req.model(), Some("gpt-4o"));
/// ```
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The request body (`model`, `messages`, `max_tokens`, …). `stream` and
    /// `stream_options` are set by the call API.
    pub body: Value,
    /// Calling tenant, for budgets scoped by tenant.
    pub tenant: String,
    /// Route to use instead of the one matching the model.
    pub route: String,
    /// Upstream to send to when no route applies (bring your own target).
    pub upstream: String,
    /// Queue priority among waiting calls (higher first).
    pub priority: i16,
    /// Time the whole call may take: waiting, every attempt and backoff. `None`: no limit
    /// beyond the upstream's timeouts.
    pub deadline: Option<Duration>,
    /// Cache choice for this request.
    pub cache: CacheMode,
}

impl ChatRequest {
    /// A request with this body and defaults for the rest.
    pub fn new(body: Value) -> ChatRequest {
        ChatRequest {
            body,
            tenant: String::new(),
            route: String::new(),
            upstream: String::new(),
            priority: 0,
            deadline: None,
            cache: CacheMode::Default,
        }
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Sets the route.
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = route.into();
        self
    }

    /// Sets the upstream used when no route applies.
    pub fn upstream(mut self, upstream: impl Into<String>) -> Self {
        self.upstream = upstream.into();
        self
    }

    /// Sets the queue priority.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the deadline of the whole call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the cache mode.
    pub fn cache_mode(mut self, mode: CacheMode) -> Self {
        self.cache = mode;
        self
    }

    /// The body's `model`, when it is a string.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An upstream answered this call.
    Upstream,
    /// The response cache.
    Cache,
    /// An identical call in flight at the same time (single-flight).
    Shared,
    /// An expired cache entry, served because every target failed (`stale_if_error`).
    Stale,
}

impl Source {
    /// `upstream`, `cache`, `shared` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Cache => "cache",
            Source::Shared => "shared",
            Source::Stale => "stale",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`crate::Engine::send`].
#[derive(Debug, Clone)]
pub struct ChatResponse {
    /// HTTP status (2xx).
    pub status: u16,
    /// Response headers from the upstream (empty for answers from the cache).
    pub headers: HeaderMap,
    /// The JSON body as received.
    pub body: Bytes,
    /// Usage the upstream reported.
    pub usage: Option<Usage>,
    /// What the call was charged (`None` for cache hits and shared answers, which cost nothing).
    pub settlement: Option<Settlement>,
    /// Where the answering attempt went, when routed.
    pub target: Option<TargetRef>,
    /// Attempts made (0 for cache hits and shared answers).
    pub attempts: u32,
    /// Earlier attempts that failed and were retried, oldest first.
    pub history: Vec<AttemptRecord>,
    /// Where the answer came from.
    pub source: Source,
    /// Time spent waiting for budget room, over every attempt.
    pub queued: Duration,
}

impl ChatResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The first choice's `message.content`, when there is one.
    pub fn text(&self) -> Option<String> {
        let v = self.json().ok()?;
        v.pointer("/choices/0/message/content")?
            .as_str()
            .map(str::to_owned)
    }

    pub(crate) fn from_cache(r: &CachedResponse, source: Source) -> ChatResponse {
        ChatResponse {
            status: r.status,
            headers: HeaderMap::new(),
            body: Bytes::copy_from_slice(&r.body),
            usage: r.usage,
            settlement: None,
            target: None,
            attempts: 0,
            history: vec![],
            source,
            queued: Duration::ZERO,
        }
    }
}

/// Why a call through the call API failed. [`CallError::code`] gives a stable short name.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// A budget refused the call (at once, or after waiting as long as the policy allows).
    #[error("denied: {0}")]
    Denied(Denial),
    /// The call failed and was not retried further; `status` and `body` are the last answer's.
    #[error("{reason}")]
    GaveUp {
        /// Why, with every attempt.
        reason: GiveUp,
        /// Status of the last answer, if one came.
        status: Option<u16>,
        /// Body of the last answer (the upstream's error JSON), if one came.
        body: Option<Bytes>,
    },
    /// The caller's deadline passed.
    #[error("the call's deadline of {after:?} passed")]
    Deadline {
        /// The deadline.
        after: Duration,
    },
    /// The request is not a chat request this API can send.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Nothing in the policy says where this call goes.
    #[error("{0}")]
    NoUpstream(String),
    /// The credentials could not be read or obtained.
    #[error("credentials: {0}")]
    Auth(AuthError),
    /// The transport could not be set up for the upstream (for example an unreadable CA file).
    #[error("transport: {0}")]
    Transport(TransportError),
    /// An identical call in flight, whose answer this one waited for, failed.
    #[error("the identical call this one waited for failed: {0}")]
    Shared(String),
    /// A stream broke off after content had reached the caller; it is not retried.
    #[error("the stream broke off after content was delivered: {message}")]
    StreamCut {
        /// What happened.
        message: String,
        /// What the call was charged.
        settlement: Option<Box<Settlement>>,
    },
}

impl CallError {
    /// A stable short name: `denied`, `gave_up`, `deadline`, `invalid_request`, `no_upstream`,
    /// `auth`, `transport`, `shared`, `stream_cut`.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Denied(_) => "denied",
            CallError::GaveUp { .. } => "gave_up",
            CallError::Deadline { .. } => "deadline",
            CallError::InvalidRequest(_) => "invalid_request",
            CallError::NoUpstream(_) => "no_upstream",
            CallError::Auth(_) => "auth",
            CallError::Transport(_) => "transport",
            CallError::Shared(_) => "shared",
            CallError::StreamCut { .. } => "stream_cut",
        }
    }

    /// The budget that decided a denial.
    pub fn budget(&self) -> Option<&str> {
        match self {
            CallError::Denied(d) => d.budget.as_deref(),
            _ => None,
        }
    }
}

impl CallError {
    /// A give-up with the last answer's status and body, when one came.
    pub(crate) fn gave_up(reason: GiveUp, last: Option<(u16, Bytes)>) -> CallError {
        let (status, body) = last.map_or((None, None), |(s, b)| (Some(s), Some(b)));
        CallError::GaveUp {
            reason,
            status,
            body,
        }
    }
}

/// The request's model, or why it has none.
pub(crate) fn model_of(request: &ChatRequest) -> Result<&str, CallError> {
    if !request.body.is_object() {
        return Err(CallError::InvalidRequest(
            "the request body must be a JSON object (an OpenAI chat-completions request)".into(),
        ));
    }
    match request.body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        Some(_) => Err(CallError::InvalidRequest(
            "`model` must be a non-empty string".into(),
        )),
        None => Err(CallError::InvalidRequest(
            "the request has no `model`; add \"model\": \"gpt-4o\" (or the model you route)".into(),
        )),
    }
}
