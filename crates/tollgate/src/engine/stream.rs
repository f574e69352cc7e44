//! Streaming calls: [`Engine::stream`] and the [`ChatStream`] it returns.
//!
//! The stream asks the upstream for a final usage chunk (`stream_options.include_usage`, unless
//! the upstream's `stream_usage = false`) and, when none comes, counts the streamed text. Until
//! the first event reaches the caller a failed attempt is retried like [`Engine::send`] would;
//! after that the call is never retried nor moved to another target: a cut stream ends in
//! [`CallError::StreamCut`], never in a clean end — unless the upstream numbers its events and
//! its policy says `resume_streams = true`, in which case the request is sent again with
//! `Last-Event-ID` and the caller sees one stream.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use memchr::memmem::Finder;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::cache::{CachedResponse, SseEvent};
use crate::dialect::{EventMap, ProviderError};
use crate::retry::Failure;
use crate::retry::is_success;
use crate::tokens::Usage;
use crate::transport::sse::{Decoder, Event};
use crate::transport::{Response, StreamResponse, TransportError};

use super::Engine;
use super::cache::CacheFill;
use super::outcome::{Outcome, Settlement};
use super::permit::Permit;
use super::request::{CallError, ChatRequest, Source, model_of};
use super::route::{Attempt, AttemptRecord, TargetRef};
use super::send::{Cached, Next, Ready, SentBody, header_pairs};
use super::wire::{Wire, exchange};

/// How long the end of the body is awaited after `[DONE]` (to pool the connection).
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(50);

/// How many times one stream may resume with `Last-Event-ID`.
const MAX_RESUMES: u32 = 3;

/// A streamed answer: read it with [`ChatStream::next`].
///
/// Every event is yielded as it arrives, the final `data: [DONE]` included; after it (or after
/// an error) `next` returns `None`. Dropping the stream cancels the call: the connection is
/// closed and the permit dropped (slot freed, unused reservation refunded).
pub struct ChatStream {
    engine: Engine,
    request: ChatRequest,
    model: String,
    deadline: Option<Instant>,
    /// Where the answer comes from.
    source: Source,
    status: u16,
    headers: HeaderMap,
    live: Option<Live>,
    attempt: Option<Box<Attempt>>,
    /// The body sent to the last attempt, reused while the target model stays the same.
    sent: Option<SentBody>,
    history: Vec<AttemptRecord>,
    attempts: u32,
    replay: VecDeque<Event>,
    fill: Option<CacheFill>,
    recorded: Vec<SseEvent>,
    recorded_bytes: u64,
    delivered: bool,
    /// What the answer's text needs: the events' data kept as they came (read only when the
    /// stream brings no usage, or for the cache), or the text itself past [`MAX_KEPT`].
    text: Text,
    usage: Option<Usage>,
    finished: bool,
    seen_finish_reason: bool,
    live_target: Option<TargetRef>,
    queued: Duration,
    settlement: Option<Settlement>,
    done: bool,
}

/// The attempt being read.
struct Live {
    permit: Permit,
    wire: Arc<Wire>,
    body: Bytes,
    key: Arc<str>,
    target: Option<TargetRef>,
    /// The body being read; `None` once a whole (JSON) answer was turned into events.
    response: Option<StreamResponse>,
    /// The dialect's translator of events (`None`: OpenAI's events go as they are).
    mapper: Option<Box<dyn EventMap>>,
    url: Option<Arc<str>>,
    decoder: Decoder,
    pending: VecDeque<Event>,
    sent_at: Instant,
    first_token: bool,
    last_id: Option<String>,
    resumes: u32,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatStream")
            .field("model", &self.model)
            .field("source", &self.source)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts a streamed chat request through the whole pipeline (see [`ChatStream`]). Returns
    /// once an upstream accepted the request with a 2xx head (retrying before that as the policy
    /// says), or at once with the cache's answer.
    ///
    /// Must run in a tokio runtime; see [`Engine::send`] for time and cancellation.
    pub async fn stream(&self, request: ChatRequest) -> Result<ChatStream, CallError> {
        let model = model_of(&request)?.to_owned();
        self.drive_probes();
        let deadline = request.deadline.map(|d| Instant::now() + d);
        let mut stream = ChatStream {
            engine: self.clone(),
            request,
            model,
            deadline,
            source: Source::Upstream,
            status: 200,
            headers: HeaderMap::new(),
            live: None,
            attempt: None,
            sent: None,
            history: vec![],
            attempts: 0,
            replay: VecDeque::new(),
            fill: None,
            recorded: vec![],
            recorded_bytes: 0,
            delivered: false,
            text: Text::default(),
            usage: None,
            finished: false,
            seen_finish_reason: false,
            live_target: None,
            queued: Duration::ZERO,
            settlement: None,
            done: false,
        };
        let after = stream.request.deadline;
        let start = async {
            if stream.answer_from_cache().await? {
                return Ok(());
            }
            stream.open().await
        };
        match after {
            Some(after) => tokio::time::timeout(after, start)
                .await
                .unwrap_or(Err(CallError::Deadline { after }))?,
            None => start.await?,
        }
        Ok(stream)
    }
}

impl ChatStream {
    /// Where the answer comes from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The HTTP status of the answering response.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The answering response's headers (empty for cached answers).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Where the answering attempt went, when routed.
    pub fn target(&self) -> Option<&TargetRef> {
        match &self.live {
            Some(l) => l.target.as_ref(),
            None => self.live_target.as_ref(),
        }
    }

    /// Attempts made so far (0 for answers from the cache).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time spent waiting for budget room, over every attempt so far.
    pub fn queued(&self) -> Duration {
        self.queued
    }

    /// Failed attempts before the answering one, oldest first.
    pub fn history(&self) -> &[AttemptRecord] {
        &self.history
    }

    /// Usage: the upstream's final usage chunk, or the count of the streamed text once the
    /// stream ended without one; `None` before the end.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// What the call was charged, once the stream ended.
    pub fn settlement(&self) -> Option<&Settlement> {
        self.settlement.as_ref()
    }

    /// The next event; `None` after `[DONE]` or an error.
    pub async fn next(&mut self) -> Option<Result<Event, CallError>> {
        if self.done {
            return None;
        }
        let result = match self.deadline {
            Some(at) => {
                let after = self.request.deadline.unwrap_or_default();
                match tokio::time::timeout_at(at.into(), self.step()).await {
                    Ok(r) => r,
                    Err(_) => Err(CallError::Deadline { after }),
                }
            }
            None => self.step().await,
        };
        match result {
            Ok(Some(event)) => {
                if event.is_done() {
                    self.done = true;
                }
                Some(Ok(event))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                if let Some(fill) = self.fill.take() {
                    self.engine.cache_fail(fill, &e.to_string());
                }
                Some(Err(e))
            }
        }
    }

    /// A cache hit or a shared answer, replayed; returns whether the cache answered.
    async fn answer_from_cache(&mut self) -> Result<bool, CallError> {
        match self.engine.cached(&self.request).await? {
            Cached::Answer(r, source) => {
                self.replay_from(&r, source);
                Ok(true)
            }
            Cached::Fetch(fill) => {
                self.fill = fill;
                Ok(false)
            }
        }
    }

    fn replay_from(&mut self, r: &CachedResponse, source: Source) {
        self.source = source;
        self.status = r.status;
        self.usage = r.usage;
        self.replay = match &r.events {
            Some(events) => events
                .iter()
                .map(|e| Event {
                    event: e.event.clone(),
                    data: e.data.clone(),
                    id: e.id.clone(),
                    retry: None,
                })
                .collect(),
            None => events_from_body(&r.body),
        };
    }

    /// Admits and sends attempts until one answers with a 2xx head.
    async fn open(&mut self) -> Result<(), CallError> {
        loop {
            let Ready {
                permit,
                wire,
                body,
                key,
                target,
                queued,
                url,
            } = self
                .engine
                .ready(
                    &self.request,
                    &self.model,
                    self.attempt.as_deref(),
                    true,
                    &mut self.sent,
                )
                .await?;
            self.attempts += 1;
            self.queued += queued;
            let sent_at = Instant::now();
            let result = match send_stream(&wire, body.clone(), &key, None, url.as_deref()).await {
                Ok(result) => result,
                Err(e) => {
                    self.engine.settle(permit, &Outcome::not_sent());
                    return Err(e);
                }
            };
            let latency = sent_at.elapsed();
            let mut live = Live {
                permit,
                wire,
                body,
                key,
                target,
                response: None,
                mapper: None,
                url,
                decoder: Decoder::new(),
                pending: VecDeque::new(),
                sent_at,
                first_token: false,
                last_id: None,
                resumes: 0,
            };
            let sent_model = live
                .target
                .as_ref()
                .map_or(self.model.as_str(), |t| &*t.model);
            let whole = match result {
                Ok(Opened::Events(response)) => {
                    self.status = response.status.as_u16();
                    self.headers = response.headers.clone();
                    live.mapper = live.wire.speaker.events(sent_model);
                    live.response = Some(response);
                    self.live = Some(live);
                    return Ok(());
                }
                Ok(Opened::Whole(response)) => response,
                Err(e) => {
                    let next = self.failed_attempt(live.permit, &e, latency)?;
                    self.after(next, None).await?;
                    continue;
                }
            };
            // An error, or a whole answer where events were asked for: the dialect reads it.
            let mut headers = whole.headers;
            let answer =
                live.wire
                    .speaker
                    .answer(whole.status.as_u16(), &headers, whole.body, sent_model);
            if answer.translated {
                headers.remove(http::header::CONTENT_LENGTH);
            }
            if answer.error.is_none()
                && answer.malformed.is_none()
                && is_success(answer.status)
                && Usage::from_response_bytes(&answer.body).is_ok()
            {
                // A completion: delivered as the events of a stream.
                self.status = answer.status;
                self.headers = headers;
                live.pending = events_from_body(&answer.body);
                self.live = Some(live);
                return Ok(());
            }
            let error = answer.failure();
            let pairs = header_pairs(&headers);
            let mut outcome = Outcome::status(answer.status)
                .with_headers(&pairs)
                .with_latency(latency);
            outcome.error = error.as_ref().map(|(_, e)| e);
            if is_success(answer.status) {
                outcome.failure = Some(Failure::Malformed);
            }
            let next = Next::of(self.engine.settle(live.permit, &outcome));
            self.after(next, Some((answer.status, answer.body))).await?;
        }
    }

    fn failed_attempt(
        &self,
        permit: Permit,
        e: &TransportError,
        latency: Duration,
    ) -> Result<Next, CallError> {
        match e.failure() {
            Some(f) => Ok(Next::of(
                self.engine
                    .settle(permit, &Outcome::failed(f).with_latency(latency)),
            )),
            None => {
                self.engine.settle(permit, &Outcome::not_sent());
                Err(CallError::Transport(e.clone()))
            }
        }
    }

    /// Follows a verdict on a failed attempt: sleep and go on, or give up.
    async fn after(&mut self, next: Next, last: Option<(u16, Bytes)>) -> Result<(), CallError> {
        match next {
            Next::Retry(after, attempt) => {
                self.history = attempt.history.clone();
                self.attempt = Some(attempt);
                tokio::time::sleep(after).await;
                Ok(())
            }
            Next::GiveUp(reason) => Err(CallError::gave_up(reason, last)),
            Next::Done(_) => Ok(()),
        }
    }

    /// The next event from the replay or the live attempt, handling cuts, retries and resumes.
    async fn step(&mut self) -> Result<Option<Event>, CallError> {
        if self.source != Source::Upstream {
            return Ok(self.replay.pop_front());
        }
        loop {
            let Some(live) = self.live.as_mut() else {
                // A retry after a failure before the first event.
                self.open().await?;
                continue;
            };
            if let Some(event) = live.pending.pop_front() {
                if event.is_done() && live.pending.is_empty() {
                    // Read the end of the body so an HTTP/1.1 connection goes back to the pool;
                    // bounded, for servers that keep the response open after [DONE].
                    let drain = async {
                        let Some(response) = live.response.as_mut() else {
                            return;
                        };
                        for _ in 0..16 {
                            if !matches!(response.next_chunk().await, Some(Ok(_))) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(DRAIN_AFTER_DONE, drain).await;
                }
                self.observe(&event);
                return Ok(Some(event));
            }
            if self.finished {
                return Ok(None);
            }
            let chunk = match live.response.as_mut() {
                Some(response) => response.next_chunk().await,
                None => None,
            };
            match chunk {
                Some(Ok(chunk)) => {
                    let mut out = Vec::new();
                    if live.decoder.push(&chunk, &mut out).is_err() {
                        let e = TransportError::Body {
                            target: String::new(),
                            message: "a stream event exceeded the size limit".into(),
                        };
                        // Retried when nothing was delivered yet, else the stream ends.
                        self.cut(e, Failure::Malformed, None).await?;
                        continue;
                    }
                    let Some(mapper) = live.mapper.as_mut() else {
                        live.pending.extend(out);
                        continue;
                    };
                    let error = out
                        .into_iter()
                        .find_map(|event| mapper.event(event, &mut live.pending).err());
                    if let Some(error) = error {
                        let e = TransportError::Body {
                            target: String::new(),
                            message: format!("the upstream's stream carried an error: {error}"),
                        };
                        self.cut(e, Failure::Status(error.status), Some(&error))
                            .await?;
                    }
                }
                None => {
                    // A clean end of the body. Complete only after [DONE], or after a finish
                    // reason when the upstream does not send [DONE].
                    let decoder = std::mem::take(&mut live.decoder);
                    let mapped = live.mapper.is_some();
                    if decoder.finish().is_ok() && self.finished_by_reason() {
                        self.finish(true);
                        return Ok(None);
                    }
                    let message = if mapped {
                        "the stream ended before its last event (is_end)"
                    } else {
                        "the stream ended before [DONE]"
                    };
                    let e = TransportError::Body {
                        target: String::new(),
                        message: message.into(),
                    };
                    self.cut(e, Failure::CutStream, None).await?;
                }
                Some(Err(e)) => {
                    let failure = e.failure().unwrap_or(Failure::CutStream);
                    self.cut(e, failure, None).await?;
                }
            }
        }
    }

    fn finished_by_reason(&self) -> bool {
        self.delivered && self.seen_finish_reason
    }

    /// Notes what an event carries before it goes to the caller.
    fn observe(&mut self, event: &Event) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if event.id.is_some() {
            live.last_id.clone_from(&event.id);
        }
        if event.is_done() {
            self.finish(false);
            return;
        }
        self.delivered = true;
        // Only the events that can change something are parsed: until the first content (the
        // time to first token), a finish reason, the usage chunk. The text is read from the
        // kept data at the end, and only when it is needed.
        let data = event.data.as_bytes();
        let first = !live.first_token;
        let finish = !self.seen_finish_reason && has_value(data, &FINISH_REASON);
        let usage = has_object(data, &USAGE);
        if (first || finish || usage)
            && let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(&event.data)
        {
            for c in &chunk.choices {
                let content = c.delta.as_ref().and_then(|d| d.content.as_deref());
                if first && !live.first_token && content.is_some_and(|t| !t.is_empty()) {
                    live.first_token = true;
                    if let Some(target) = &live.target {
                        self.engine.record_ttft(
                            &target.upstream,
                            &target.model,
                            live.sent_at.elapsed(),
                        );
                    }
                }
                if c.finish_reason.is_some() {
                    self.seen_finish_reason = true;
                }
            }
            if let Some(u) = &chunk.usage
                && let Ok(Some(u)) = Usage::from_response(u)
            {
                self.usage = Some(u);
            }
        }
        self.text.keep(&event.data);
        self.record(event);
    }

    fn record(&mut self, event: &Event) {
        if self.fill.is_none() {
            return;
        }
        let e = SseEvent {
            event: event.event.clone(),
            data: event.data.clone(),
            id: event.id.clone(),
        };
        self.recorded_bytes += e.data.len() as u64 + 64;
        let limit = self.engine.policy().cache.max_entry_bytes;
        if self.recorded_bytes > limit {
            // Too large to store: let the waiters know now rather than at the end.
            if let Some(fill) = self.fill.take() {
                self.engine
                    .cache_fail(fill, "the streamed answer is larger than max_entry_bytes");
            }
            self.recorded.clear();
            return;
        }
        self.recorded.push(e);
    }

    /// The stream completed: settle with the usage and store it in the cache.
    fn finish(&mut self, without_done: bool) {
        self.finished = true;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let usage = match self.usage {
            Some(u) => u,
            None => {
                let model = live
                    .target
                    .as_ref()
                    .map_or(self.model.as_str(), |t| &*t.model);
                let compiled = self.engine.inner.current();
                Usage::from_streamed(
                    model,
                    &compiled.models,
                    live.permit.prompt_tokens(),
                    self.text.text(),
                )
            }
        };
        self.usage = Some(usage);
        let Some(live) = self.live.take() else {
            return;
        };
        let latency = live.sent_at.elapsed();
        let outcome = Outcome::ok(usage)
            .with_latency(latency)
            .with_content_delivered();
        let verdict = self.engine.settle(live.permit, &outcome);
        self.settlement = Some(*verdict.settlement());
        if let Some(fill) = self.fill.take() {
            let mut events = std::mem::take(&mut self.recorded);
            if without_done {
                events.push(SseEvent::data("[DONE]"));
            }
            let body = assembled_body(&self.model, self.text.text(), usage);
            let cached = CachedResponse::new(self.status, body.into_bytes())
                .with_events(events)
                .with_usage(usage);
            let _ = self.engine.cache_store(fill, cached);
        }
        // Keep the target for `target()` after the end.
        self.live_target = live.target;
    }

    /// A failure while reading: retry (nothing delivered yet), resume (`Last-Event-ID`), or end
    /// the stream with an error.
    async fn cut(
        &mut self,
        e: TransportError,
        failure: Failure,
        error: Option<&ProviderError>,
    ) -> Result<(), CallError> {
        let Some(mut live) = self.live.take() else {
            return Err(CallError::StreamCut {
                message: e.to_string(),
                settlement: None,
            });
        };
        let latency = live.sent_at.elapsed();
        let outcome = match error {
            // An error event: the upstream answered, with that error.
            Some(error) => Outcome::status(error.status).with_error(error),
            None => Outcome::failed(failure),
        }
        .with_latency(latency);
        if !self.delivered {
            let next = Next::of(self.engine.settle(live.permit, &outcome));
            let last = error.map(|e| (e.status, e.openai_body()));
            return self.after(next, last).await;
        }
        if live.wire.config.resume_streams
            && live.resumes < MAX_RESUMES
            && let Some(id) = live.last_id.clone()
        {
            live.resumes += 1;
            let url = live.url.clone();
            let resumed = send_stream(
                &live.wire,
                live.body.clone(),
                &live.key,
                Some(&id),
                url.as_deref(),
            )
            .await;
            if let Ok(Ok(Opened::Events(response))) = resumed {
                live.response = Some(response);
                live.decoder = Decoder::new();
                self.live = Some(live);
                return Ok(());
            }
        }
        let outcome = outcome.with_content_delivered();
        let verdict = self.engine.settle(live.permit, &outcome);
        Err(CallError::StreamCut {
            message: e.to_string(),
            settlement: Some(Box::new(*verdict.settlement())),
        })
    }
}

/// What a streaming request got back.
enum Opened {
    /// A 2xx answer of events, to read as they come.
    Events(StreamResponse),
    /// Anything else, read whole: an error status, or a JSON body (an error in a 200 answer,
    /// or an upstream that ignored `stream: true`).
    Whole(Response),
}

/// Largest whole body read in answer to a streaming request.
const MAX_WHOLE: usize = 4 << 20;

impl Opened {
    /// Reads the body of `response` when it is not a stream of events.
    async fn of(mut response: StreamResponse) -> Result<Opened, TransportError> {
        let events = response.status.is_success()
            && response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|t| !t.to_ascii_lowercase().contains("json"));
        if events {
            return Ok(Opened::Events(response));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.next_chunk().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // An error body cut short is still worth showing; a completion is not whole.
                Err(e) if response.status.is_success() => return Err(e),
                Err(_) => break,
            };
            if body.len() + chunk.len() > MAX_WHOLE {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Opened::Whole(Response {
            status: response.status,
            headers: std::mem::take(&mut response.headers),
            body: Bytes::from(body),
            version: response.version,
        }))
    }
}

/// Sends one streaming request with its credentials (one replay when the credential expired).
async fn send_stream(
    wire: &Wire,
    body: Bytes,
    key: &str,
    last_event_id: Option<&str>,
    url: Option<&str>,
) -> Result<Result<Opened, TransportError>, CallError> {
    let client = &wire.client;
    exchange(
        wire,
        body,
        key,
        last_event_id,
        url,
        true,
        |req| async move { Opened::of(client.stream(req).await?).await },
        |r, wire| match r {
            Opened::Events(r) => r.status.as_u16() == 401,
            Opened::Whole(r) => wire
                .speaker
                .auth_expired(r.status.as_u16(), &r.headers, &r.body),
        },
    )
    .await
    .map_err(CallError::Auth)
}

/// A `chat.completion` body assembled from a stream, stored with its events so a later JSON
/// request with the same key gets a JSON answer.
fn assembled_body(model: &str, text: &str, usage: Usage) -> String {
    serde_json::json!({
        "object": "chat.completion",
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    })
    .to_string()
}

/// Stream events for a cached JSON answer: one chunk with the whole message, then the usage
/// chunk and `[DONE]`.
fn events_from_body(body: &[u8]) -> VecDeque<Event> {
    let mut out = VecDeque::new();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        out.push_back(Event {
            data: "[DONE]".into(),
            ..Event::default()
        });
        return out;
    };
    let model = v.get("model").cloned().unwrap_or(Value::Null);
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let choices: Vec<Value> = v
        .get("choices")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    serde_json::json!({
                        "index": c.get("index").cloned().unwrap_or(Value::from(0)),
                        "delta": c.get("message").cloned().unwrap_or(Value::Null),
                        "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let chunk = |choices: Vec<Value>, usage: Value| {
        serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "model": model,
            "choices": choices, "usage": usage,
        })
        .to_string()
    };
    out.push_back(Event {
        data: chunk(choices, Value::Null),
        ..Event::default()
    });
    if let Some(u) = v.get("usage") {
        out.push_back(Event {
            data: chunk(vec![], u.clone()),
            ..Event::default()
        });
    }
    out.push_back(Event {
        data: "[DONE]".into(),
        ..Event::default()
    });
    out
}

/// Kept event data beyond this many bytes is read into text at once (and no longer kept).
const MAX_KEPT: usize = 1 << 20;

/// `"finish_reason"`, as a chunk's key. The searchers are built once: building one per event
/// cost about 5 % of a stream's client CPU.
static FINISH_REASON: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"finish_reason\""));
/// `"usage"`, as a chunk's key.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

/// The answer's text of a stream, read lazily: the events' data is kept as it came and parsed
/// only when the text is asked for (most streams end with a usage chunk and never need it).
#[derive(Default)]
struct Text {
    /// Data of the events not read yet, one after another.
    kept: String,
    /// Where each kept event's data ends in `kept`.
    ends: Vec<usize>,
    /// The text read so far.
    text: String,
}

impl Text {
    fn keep(&mut self, data: &str) {
        self.kept.push_str(data);
        self.ends.push(self.kept.len());
        if self.kept.len() > MAX_KEPT {
            self.read();
        }
    }

    /// Reads the kept events into the text.
    fn read(&mut self) {
        let mut start = 0;
        for &end in &self.ends {
            if let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(&self.kept[start..end]) {
                for c in &chunk.choices {
                    if let Some(t) = c.delta.as_ref().and_then(|d| d.content.as_deref()) {
                        self.text.push_str(t);
                    }
                }
            }
            start = end;
        }
        self.kept.clear();
        self.ends.clear();
    }

    /// The streamed text so far.
    fn text(&mut self) -> &str {
        if !self.ends.is_empty() {
            self.read();
        }
        &self.text
    }
}

/// Whether `data` has `key` followed by a value other than `null` (a quote inside a JSON string
/// is escaped, so the key's bytes cannot come from content). A false hit only costs a parse.
fn has_value(data: &[u8], key: &Finder<'_>) -> bool {
    value_after(data, key).is_some_and(|b| b != b'n')
}

/// Whether `data` has `key` followed by an object.
fn has_object(data: &[u8], key: &Finder<'_>) -> bool {
    value_after(data, key) == Some(b'{')
}

/// The first byte of the value after the first `key` in `data` that is followed by a colon.
fn value_after(data: &[u8], key: &Finder<'_>) -> Option<u8> {
    let len = key.needle().len();
    let mut from = 0;
    while let Some(at) = key.find(&data[from..]) {
        let rest = &data[from + at + len..];
        let mut bytes = rest.iter().copied().skip_while(u8::is_ascii_whitespace);
        if bytes.next() == Some(b':') {
            return bytes.find(|b| !b.is_ascii_whitespace());
        }
        from += at + len;
    }
    None
}

/// The parts of a `chat.completion.chunk` the stream reads; everything else is skipped without
/// building a `Value` (the hot path of a stream).
#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(serde::Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    finish_reason: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_only_after_the_key() {
        let stop = br#"{"choices":[{"delta":{},"finish_reason" : "stop"}]}"#;
        let none =
            br#"{"choices":[{"delta":{"content":"\"finish_reason\": 1"},"finish_reason":null}]}"#;
        assert!(has_value(stop, &FINISH_REASON));
        assert!(
            !has_value(none, &FINISH_REASON),
            "a key inside content is escaped"
        );
        assert!(!has_value(br#"{"finish_reason"}"#, &FINISH_REASON));
        let usage = br#"{"choices":[],"usage":{"prompt_tokens":1}}"#;
        assert!(has_object(usage, &USAGE));
        assert!(!has_object(br#"{"choices":[],"usage":null}"#, &USAGE));
        assert!(!has_object(br#"{"choices":[]}"#, &USAGE));
        // A first occurrence without a colon does not hide a later key.
        assert!(has_object(br#"["\"usage\"", {"usage": {}}]"#, &USAGE));
    }

    #[test]
    fn text_is_read_from_kept_events_when_asked() {
        let mut t = Text::default();
        for part in ["Hel", "lo", ""] {
            t.keep(&format!(
                r#"{{"choices":[{{"delta":{{"content":"{part}"}}}}]}}"#
            ));
        }
        t.keep("not json");
        t.keep(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#);
        assert_eq!(t.text(), "Hello");
        t.keep(r#"{"choices":[{"delta":{"content":" world"}}]}"#);
        assert_eq!(t.text(), "Hello world");
    }

    #[test]
    fn kept_data_stays_bounded() {
        let mut t = Text::default();
        let event = format!(
            r#"{{"choices":[{{"delta":{{"content":"{}"}}}}]}}"#,
            "x".repeat(1000)
        );
        for _ in 0..(MAX_KEPT / 1000 + 10) {
            t.keep(&event);
            assert!(t.kept.len() <= MAX_KEPT + event.len());
        }
        assert_eq!(t.text().len(), (MAX_KEPT / 1000 + 10) * 1000);
    }
}
