//! The call API: [`Engine::send`] runs the whole pipeline for one chat request.
//!
//! cache and single-flight → admission (waiting where the policy says so) → credentials →
//! transport → classification → retry / fallback → reconciliation → cache store, within the
//! caller's deadline. Dropping the future cancels the call: its permit is dropped, which refunds
//! what was not used and frees its concurrency slot.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::auth::AuthError;
use crate::cache::{CacheMode, CachedResponse, FlightError};
use crate::retry::Failure;
use crate::tokens::Usage;
use crate::transport::TransportError;

use super::admit::RouteHint;
use super::cache::{CacheFill, CacheLookup};
use super::decision::{Decision, Denial, GiveUp, Outcome, Settlement, Verdict};
use super::permit::Permit;
use super::route::{Attempt, AttemptRecord, TargetRef};
use super::wire::{Wire, body_for, exchange};
use super::{Call, Engine, Prompt};

/// One chat-completions request for [`Engine::send`] or [`Engine::stream`]: the OpenAI request
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

/// The answer of [`Engine::send`].
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

/// The body sent to the last attempt's target, kept for the next attempt.
pub(crate) struct SentBody {
    /// The model written into it (`None`: the caller's own).
    model: Option<Arc<str>>,
    /// Whether it asks for the usage chunk of a stream.
    stream_usage: bool,
    bytes: Bytes,
}

/// An admitted attempt, ready to go on the wire.
pub(crate) struct Ready {
    pub permit: Permit,
    pub wire: Arc<Wire>,
    pub body: Bytes,
    /// The pool key to use (empty: the upstream's own choice).
    pub key: Arc<str>,
    pub target: Option<TargetRef>,
    /// Time this admission waited for room.
    pub queued: Duration,
}

/// What to do after a settled attempt.
pub(crate) enum Next {
    Done(Settlement),
    Retry(Duration, Box<Attempt>),
    GiveUp(GiveUp),
}

impl Next {
    pub(crate) fn of(verdict: Verdict) -> Next {
        match verdict {
            Verdict::Done(s) => Next::Done(s),
            Verdict::Retry { after, attempt, .. } => Next::Retry(after, attempt),
            Verdict::GiveUp { reason, .. } => Next::GiveUp(reason),
        }
    }
}

/// Response headers as the engine reads them.
pub(crate) fn header_pairs(headers: &HeaderMap) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect()
}

impl Engine {
    /// Sends a chat request through the whole pipeline and returns the upstream's answer (or the
    /// cache's).
    ///
    /// Must run in a tokio runtime (the transport's connections are tasks on it). Waiting for
    /// budget room, backoff between attempts and the deadline use real time, so the engine
    /// should run on its default clock.
    ///
    /// Dropping the future cancels the call at once: the upstream connection is closed, the
    /// permit is dropped (its concurrency slot freed, unused reservations refunded) and callers
    /// waiting on it through single-flight are told it was abandoned.
    pub async fn send(&self, request: ChatRequest) -> Result<ChatResponse, CallError> {
        match request.deadline {
            Some(after) => tokio::time::timeout(after, self.send_now(&request))
                .await
                .unwrap_or(Err(CallError::Deadline { after })),
            None => self.send_now(&request).await,
        }
    }

    async fn send_now(&self, request: &ChatRequest) -> Result<ChatResponse, CallError> {
        let model = model_of(request)?;
        self.drive_probes();
        let fill = match self.cached(request).await? {
            Cached::Answer(r, source) => return Ok(ChatResponse::from_cache(&r, source)),
            Cached::Fetch(fill) => fill,
        };
        let result = self.send_attempts(request, model).await;
        match (&result, fill) {
            (Ok(response), Some(fill)) => {
                let mut cached = CachedResponse::new(response.status, &response.body[..]);
                if let Some(u) = response.usage {
                    cached = cached.with_usage(u);
                }
                let _ = self.cache_store(fill, cached);
            }
            (Err(e), Some(fill)) => self.cache_fail(fill, &e.to_string()),
            _ => {}
        }
        match result {
            Err(e @ CallError::GaveUp { .. }) => match self.cache_stale(&request.body) {
                Some(r) => {
                    self.inner.metrics.cache_answer(Source::Stale.as_str());
                    Ok(ChatResponse::from_cache(&r, Source::Stale))
                }
                None => Err(e),
            },
            other => other,
        }
    }

    async fn send_attempts(
        &self,
        request: &ChatRequest,
        model: &str,
    ) -> Result<ChatResponse, CallError> {
        let mut attempt: Option<Box<Attempt>> = None;
        let mut last: Option<(u16, Bytes)> = None;
        let mut queued = Duration::ZERO;
        let mut sent = None;
        loop {
            let ready = self
                .ready(request, model, attempt.as_deref(), false, &mut sent)
                .await?;
            let Ready {
                permit,
                wire,
                body,
                key,
                target,
                queued: waited,
            } = ready;
            queued += waited;
            let started = Instant::now();
            let client = &wire.client;
            let exchanged = exchange(
                &wire,
                body,
                &key,
                None,
                false,
                |req| client.send(req),
                |r| r.status.as_u16(),
            )
            .await;
            let result = match exchanged {
                Ok(result) => result,
                Err(e) => {
                    self.settle(permit, &Outcome::not_sent());
                    return Err(CallError::Auth(e));
                }
            };
            let latency = started.elapsed();
            let next = match result {
                Ok(response) => {
                    let status = response.status.as_u16();
                    let headers = header_pairs(&response.headers);
                    let mut outcome = Outcome::status(status)
                        .with_headers(&headers)
                        .with_latency(latency);
                    if response.status.is_success() {
                        match serde_json::from_slice::<UsageOnly>(&response.body) {
                            Ok(body) => outcome.usage = body.usage(),
                            Err(_) => outcome.failure = Some(Failure::Malformed),
                        }
                    }
                    let usage = outcome.usage;
                    let next = Next::of(self.settle(permit, &outcome));
                    if let Next::Done(settlement) = next {
                        let history = attempt.map(|a| a.history.clone()).unwrap_or_default();
                        return Ok(ChatResponse {
                            status,
                            headers: response.headers.clone(),
                            body: response.body.clone(),
                            usage,
                            settlement: Some(settlement),
                            attempts: history.len() as u32 + 1,
                            history,
                            target,
                            source: Source::Upstream,
                            queued,
                        });
                    }
                    last = Some((status, response.body.clone()));
                    next
                }
                Err(e) => match e.failure() {
                    Some(f) => {
                        let outcome = Outcome::failed(f).with_latency(latency);
                        Next::of(self.settle(permit, &outcome))
                    }
                    None => {
                        self.settle(permit, &Outcome::not_sent());
                        return Err(CallError::Transport(e));
                    }
                },
            };
            match next {
                Next::Done(_) => unreachable!("returned above"),
                Next::Retry(after, a) => {
                    tokio::time::sleep(after).await;
                    attempt = Some(a);
                }
                Next::GiveUp(reason) => return Err(CallError::gave_up(reason, last)),
            }
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

impl Engine {
    /// Admits the next attempt of `request` (waiting in the budgets' queues where the policy
    /// says so), and prepares what goes on the wire: the upstream, the key and the body.
    ///
    /// The route is resolved once (admission reuses it while the policy is the same), the
    /// upstream and its wire are found by index in the compiled policy, and `body` keeps the
    /// serialised request across attempts: it is built again only when a fallback sends it to
    /// another model (or an upstream with other stream settings).
    pub(crate) async fn ready(
        &self,
        request: &ChatRequest,
        model: &str,
        attempt: Option<&Attempt>,
        stream: bool,
        body: &mut Option<SentBody>,
    ) -> Result<Ready, CallError> {
        let compiled = self.inner.current();
        let policy = &compiled.policy;
        let route = compiled
            .routing
            .route_for(&request.route, model, &request.upstream);
        if !request.route.is_empty() && route.is_none() {
            return Err(CallError::NoUpstream(format!(
                "the request names route '{}', which the policy does not have",
                request.route
            )));
        }
        let upstream_name: &str = if route.is_some() || !request.upstream.is_empty() {
            &request.upstream
        } else {
            match policy.upstreams.as_slice() {
                [only] => &only.name,
                [] => {
                    return Err(CallError::NoUpstream(format!(
                        "the policy has no [[upstream]] to send model '{model}' to; add one"
                    )));
                }
                _ => {
                    return Err(CallError::NoUpstream(format!(
                        "no [[route]] matches model '{model}' and the policy has several \
                         upstreams; add a route for it or name the upstream in the request"
                    )));
                }
            }
        };
        let mut call = Call::new(model)
            .tenant(&request.tenant)
            .route(&request.route)
            .upstream(upstream_name)
            .priority(request.priority)
            .prompt(Prompt::Request(&request.body));
        call.deadline = request.deadline;
        call.attempt = attempt;
        let hint = RouteHint {
            generation: compiled.generation,
            route,
        };
        let (permit, queued) = self
            .admit_waiting(&call, Some(hint))
            .await
            .map_err(CallError::Denied)?;
        // The policy running now (a reload may have come while the call waited): the permit's
        // indices are used when they belong to it, else the upstream is found by name.
        let now = self.inner.current.load();
        let index = match (permit.upstream_index(now.generation), permit.target()) {
            (Some(i), _) => Some(i),
            (None, Some(t)) => now
                .policy
                .upstreams
                .iter()
                .position(|u| *u.name == *t.upstream),
            (None, None) => now
                .policy
                .upstreams
                .iter()
                .position(|u| u.name == upstream_name),
        };
        let Some(index) = index else {
            let name = permit.target().map_or(upstream_name, |t| &*t.upstream);
            return Err(CallError::NoUpstream(format!(
                "upstream '{name}' is not in the policy"
            )));
        };
        let config = &now.policy.upstreams[index];
        let wire = now.wires[index].get(config).map_err(CallError::Transport)?;
        let target = permit.target().cloned();
        let target_model = target.as_ref().map(|t| &t.model);
        let reuse = body.as_ref().is_some_and(|b| {
            b.model.as_ref() == target_model && b.stream_usage == config.stream_usage
        });
        if !reuse {
            let bytes = body_for(
                &request.body,
                target_model.map(|m| &**m),
                stream,
                config.stream_usage,
            )
            .map_err(|e| CallError::InvalidRequest(format!("cannot serialise the body: {e}")))?;
            *body = Some(SentBody {
                model: target_model.cloned(),
                stream_usage: config.stream_usage,
                bytes,
            });
        }
        let bytes = body.as_ref().map(|b| b.bytes.clone()).unwrap_or_default();
        let key = target
            .as_ref()
            .map_or_else(|| Arc::from(""), |t| Arc::clone(&t.key));
        Ok(Ready {
            permit,
            wire,
            body: bytes,
            key,
            target,
            queued,
        })
    }

    /// Admission that waits asynchronously in the budgets' priority queues, and for targets
    /// passed over for a known time (open circuits, a server's rate-limit reset) as the
    /// [`Waiter`] does: up to the policy's `retry.max_retry_after`, as for a `Retry-After`.
    pub(crate) async fn admit_waiting(
        &self,
        call: &Call<'_>,
        route: Option<RouteHint>,
    ) -> Result<(Permit, Duration), Denial> {
        let started = Instant::now();
        match self.admit_routed(call, route).await {
            Decision::Go(permit) => return Ok((permit, Duration::ZERO)),
            Decision::Deny(denial) => return Err(denial),
            Decision::Wait(_) => {}
        }
        let waiter = self.waiter_routed(call, route)?;
        waiter.wait().await.map(|p| (p, started.elapsed()))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How often the call API looks for due breaker probes.
const PROBE_EVERY: Duration = Duration::from_millis(100);

impl Engine {
    /// With `breaker.probe` in the policy, sends the probes that are due (at most every
    /// [`PROBE_EVERY`]) as tasks on the current runtime, so a half-open target is tested without
    /// users' calls and closes again when it has recovered.
    pub(crate) fn drive_probes(&self) {
        let compiled = self.inner.current();
        if compiled.policy.breaker.probe.is_none() {
            return;
        }
        let now = compiled.clock.now();
        let last = self
            .inner
            .probed_at
            .load(std::sync::atomic::Ordering::Relaxed);
        let every = u64::try_from(PROBE_EVERY.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every
            || self
                .inner
                .probed_at
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for probe in self.probes() {
            let Some(i) = compiled
                .policy
                .upstreams
                .iter()
                .position(|u| *u.name == *probe.target.upstream)
            else {
                continue;
            };
            let Ok(wire) = compiled.wires[i].get(&compiled.policy.upstreams[i]) else {
                continue;
            };
            let Ok(body) = body_for(&probe.request, None, false, false) else {
                continue;
            };
            let engine = self.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let key = probe.target.key.to_string();
                let client = &wire.client;
                let result = exchange(
                    &wire,
                    body,
                    &key,
                    None,
                    false,
                    |req| client.send(req),
                    |r| r.status.as_u16(),
                )
                .await;
                let ok = matches!(&result, Ok(Ok(r)) if r.status.is_success());
                engine.settle_probe(probe, ok, started.elapsed());
            });
        }
    }
}

impl Engine {
    /// Opens the connections each upstream's `warm_up` asks for, so the first calls do not pay
    /// the TCP and TLS handshakes; returns how many were opened. Errors are per upstream:
    /// `(upstream, error)` for each that could not be reached (the others are still warmed).
    ///
    /// Must run in a tokio runtime.
    pub async fn warm_up(&self) -> (usize, Vec<(String, TransportError)>) {
        let compiled = self.inner.current();
        let mut opened = 0;
        let mut failed = vec![];
        for (i, upstream) in compiled.policy.upstreams.iter().enumerate() {
            if upstream.warm_up == 0 {
                continue;
            }
            let result = match compiled.wires[i].get(upstream) {
                Ok(wire) => wire.warm_up().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => opened += n,
                Err(e) => failed.push((upstream.name.clone(), e)),
            }
        }
        (opened, failed)
    }
}

/// A response body read only for its `usage`: the rest is checked to be JSON and skipped, which
/// is several times cheaper than building a `Value` of the whole body.
#[derive(serde::Deserialize)]
pub(crate) struct UsageOnly {
    #[serde(default)]
    usage: Option<Value>,
}

impl UsageOnly {
    pub(crate) fn usage(&self) -> Option<Usage> {
        let u = self.usage.as_ref()?;
        Usage::from_response(u).ok().flatten()
    }
}

/// What the cache says about a call-API request.
pub(crate) enum Cached {
    /// Answered: from the cache, or from an identical call in flight.
    Answer(Arc<CachedResponse>, Source),
    /// Make the call; fill the cache with its answer when a fill is given.
    Fetch(Option<CacheFill>),
}

impl Engine {
    /// Looks the request up, waiting for an identical call in flight. A follower whose leader
    /// gave up joins again (one of them becomes the next leader), a few times at most.
    pub(crate) async fn cached(&self, request: &ChatRequest) -> Result<Cached, CallError> {
        for _ in 0..4 {
            let answer = match self.cache_lookup_async(&request.body, request.cache).await {
                CacheLookup::Hit(r) => (r, Source::Cache),
                CacheLookup::Miss(fill) => return Ok(Cached::Fetch(Some(fill))),
                CacheLookup::NotCacheable(_) => return Ok(Cached::Fetch(None)),
                CacheLookup::Joined(wait) => match wait.await {
                    Ok(Ok(r)) => (r, Source::Shared),
                    Ok(Err(message)) => return Err(CallError::Shared(message.to_string())),
                    Err(FlightError::Abandoned | FlightError::Timeout) => continue,
                },
            };
            self.inner.metrics.cache_answer(answer.1.as_str());
            return Ok(Cached::Answer(answer.0, answer.1));
        }
        Ok(Cached::Fetch(None))
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
