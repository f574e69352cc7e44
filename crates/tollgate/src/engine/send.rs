//! The call API: [`Engine::send`] runs the whole pipeline for one chat request.
//!
//! cache and single-flight → admission (waiting where the policy says so) → credentials →
//! transport → classification → retry / fallback → reconciliation → cache store, within the
//! caller's deadline. Dropping the future cancels the call: its permit is dropped, which refunds
//! what was not used and frees its concurrency slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;

use crate::cache::{CachedResponse, FlightError};
use crate::dialect::Dialect;
use crate::retry::{Failure, is_success};
use crate::tokens::Usage;

use super::admit::RouteHint;
use super::cache::{CacheFill, CacheLookup};
use super::compile::Compiled;
use super::decision::Decision;
use super::deny::Denial;
use super::outcome::{GiveUp, Outcome, Settlement, Verdict};
use super::permit::Permit;
use super::request::{CallError, ChatRequest, ChatResponse, Source, model_of};
use super::route::{Attempt, TargetRef};
use super::wire::{Wire, exchange};
use super::{Call, Engine, Prompt};

/// The body sent to the last attempt's target, kept for the next attempt.
pub(crate) struct SentBody {
    /// The model written into it (`None`: the caller's own).
    model: Option<Arc<str>>,
    /// Whether it asks for the usage chunk of a stream.
    stream_usage: bool,
    /// The dialect it is written in.
    dialect: Dialect,
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
    /// The dialect's URL for this call (`None`: `<base_url>/chat/completions`).
    pub url: Option<Arc<str>>,
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

/// Response headers as the engine reads them (on the stack for the usual dozen or so).
pub(crate) fn header_pairs(headers: &HeaderMap) -> smallvec::SmallVec<[(&str, &[u8]); 16]> {
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
            Err(e @ CallError::GaveUp { .. }) => {
                match self.cache_stale_for(&request.tenant, &request.body) {
                    Some(r) => {
                        self.inner.metrics.cache_answer(Source::Stale.as_str());
                        Ok(ChatResponse::from_cache(&r, Source::Stale))
                    }
                    None => Err(e),
                }
            }
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
                url,
            } = ready;
            queued += waited;
            let sent_model = target.as_ref().map_or(model, |t| &*t.model);
            let started = Instant::now();
            let client = &wire.client;
            let exchanged = exchange(
                &wire,
                body,
                &key,
                None,
                url.as_deref(),
                false,
                |req| client.send(req),
                |r, wire| {
                    wire.speaker
                        .auth_expired(r.status.as_u16(), &r.headers, &r.body)
                },
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
                Ok(mut response) => {
                    let mut status = response.status.as_u16();
                    // An OpenAI-dialect success goes as it came; anything else is read by the
                    // upstream's dialect (translated, its error classified).
                    let mut error = None;
                    if !(wire.speaker.is_openai() && response.status.is_success()) {
                        let body = std::mem::take(&mut response.body);
                        let answer =
                            wire.speaker
                                .answer(status, &response.headers, body, sent_model);
                        status = answer.status;
                        error = answer.failure();
                        response.body = answer.body;
                        if answer.translated {
                            response.headers.remove(CONTENT_LENGTH);
                        }
                    }
                    let (next, usage) = {
                        let headers = header_pairs(&response.headers);
                        let mut outcome = Outcome::status(status)
                            .with_headers(&headers)
                            .with_latency(latency);
                        match &error {
                            Some((true, e)) => {
                                outcome.failure = Some(Failure::Malformed);
                                outcome.error = Some(e);
                            }
                            Some((false, e)) => outcome.error = Some(e),
                            None if is_success(status) => {
                                match Usage::from_response_bytes(&response.body) {
                                    Ok(usage) => outcome.usage = usage,
                                    Err(_) => outcome.failure = Some(Failure::Malformed),
                                }
                            }
                            None => {}
                        }
                        (Next::of(self.settle(permit, &outcome)), outcome.usage)
                    };
                    if let Next::Done(settlement) = next {
                        let history = attempt.map(|a| a.history.clone()).unwrap_or_default();
                        return Ok(ChatResponse {
                            status,
                            headers: response.headers,
                            body: response.body,
                            usage,
                            settlement: Some(settlement),
                            attempts: history.len() as u32 + 1,
                            history,
                            target,
                            source: Source::Upstream,
                            queued,
                        });
                    }
                    last = Some((status, response.body));
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
            .admit_waiting(&compiled, &call, Some(hint))
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
        let unspeakable = |e: crate::dialect::Unspeakable| {
            CallError::InvalidRequest(format!(
                "upstream '{}' (dialect {}): {e}",
                config.name, config.dialect
            ))
        };
        let url = wire
            .speaker
            .url(&config.base_url, target_model.map_or(model, |m| &**m))
            .map_err(unspeakable)?
            .map(Arc::from);
        let reuse = body.as_ref().is_some_and(|b| {
            b.model.as_ref() == target_model
                && b.stream_usage == config.stream_usage
                && b.dialect == config.dialect
        });
        if !reuse {
            let bytes = wire
                .speaker
                .body(
                    &request.body,
                    target_model.map(|m| &**m),
                    stream,
                    config.stream_usage,
                )
                .map_err(unspeakable)?;
            *body = Some(SentBody {
                model: target_model.cloned(),
                stream_usage: config.stream_usage,
                dialect: config.dialect,
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
            url,
        })
    }

    /// Admission that waits asynchronously in the budgets' priority queues, and for targets
    /// passed over for a known time (open circuits, a server's rate-limit reset) as the
    /// [`super::Waiter`] does: up to the policy's `retry.max_retry_after`, as for a `Retry-After`.
    pub(crate) async fn admit_waiting(
        &self,
        compiled: &Compiled,
        call: &Call<'_>,
        route: Option<RouteHint>,
    ) -> Result<(Permit, Duration), Denial> {
        let started = Instant::now();
        match self.admit_on(compiled, call, route).await {
            Decision::Go(permit) => return Ok((permit, Duration::ZERO)),
            Decision::Deny(denial) => return Err(denial),
            Decision::Wait(_) => {}
        }
        let waiter = self.waiter_routed(call, route)?;
        waiter.wait().await.map(|p| (p, started.elapsed()))
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
            let answer = match self
                .cache_lookup_async_for(&request.tenant, &request.body, request.cache)
                .await
            {
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
